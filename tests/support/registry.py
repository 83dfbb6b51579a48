"""Real docker-registry instances for tests: anonymous, htpasswd basic auth, and token auth.

Import the fixtures into a conftest (`pytest_plugins = ["tests.support.registry"]`) or use
`start_registry()` directly (scripts, the conformance suite). Each registry listens on
127.0.0.1 at a free port over plain HTTP with its own temporary storage, and is stopped
and removed at the end.

Basic auth needs bcrypt hashes in the htpasswd file: we make them with the `bcrypt`
PyPI package. Token auth needs a token server whose JWT signing certificate the
registry trusts: `TokenServer` below is one, signing RS256 JWTs with a throw-away key
(the `cryptography` package) and putting the certificate in the JWT's x5c header.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

REGISTRY_BIN = Path("/usr/bin/docker-registry")
TEST_USER = "crishim"
TEST_PASSWORD = "s3cret-test-password"
TOKEN_SERVICE = "crishim-test-registry"
TOKEN_ISSUER = "crishim-test-token-issuer"

AuthKind = Literal["none", "basic", "token"]


@dataclass(frozen=True, slots=True)
class RegistryServer:
    """A running registry: `host` is "127.0.0.1:PORT", `url` is "http://127.0.0.1:PORT"."""

    host: str
    url: str
    auth: AuthKind
    username: str = ""
    password: str = ""
    storage: Path = Path()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Docker token-auth server: GET /token?service=&scope= with Basic credentials -> signed JWT.

    The right credentials get every action they ask for; anonymous or wrong ones get a
    token with no access, so the registry refuses them with 401 as a real one would.
    """

    def __init__(self, workdir: Path, username: str, password: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TOKEN_ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = workdir / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._username, self._password = username, password
        self.issued = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                url = urlparse(self.path)
                if url.path != "/token":
                    self.send_error(404)
                    return
                query = parse_qs(url.query)
                body = json.dumps(server.issue(self.headers.get("Authorization", ""), query)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self._httpd.server_address[1]}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(user, self._username) and secrets.compare_digest(password, self._password)

    def issue(self, authorization: str, query: dict[str, list[str]]) -> dict[str, object]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        if self._authorized(authorization):
            for scope in query.get("scope", []):
                kind, _, rest = scope.partition(":")
                repo, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": repo, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": TEST_USER,
            "aud": query.get("service", [TOKEN_SERVICE])[0],
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self._x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = f"{signing_input}.{_b64url(signature)}"
        self.issued += 1
        return {"token": token, "access_token": token, "expires_in": 600}

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _htpasswd_line(username: str, password: str) -> str:
    import bcrypt

    return f"{username}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/v2/", timeout=1.0).status_code in (200, 401):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer on {url} within {timeout}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def start_registry(auth: AuthKind = "none", *, storage: Path | None = None) -> Iterator[RegistryServer]:
    """Run /usr/bin/docker-registry on 127.0.0.1 until the block ends, then remove its files."""
    if not REGISTRY_BIN.exists():
        raise RuntimeError(f"{REGISTRY_BIN} is missing: install Debian's docker-registry package")
    workdir = Path(tempfile.mkdtemp(prefix="crishim-registry-"))
    token_server: TokenServer | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        store = storage or workdir / "storage"
        store.mkdir(parents=True, exist_ok=True)
        port = free_port()
        # YAML is a superset of JSON, so the config needs no YAML library.
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(store)}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        }
        username = password = ""
        if auth == "basic":
            username, password = TEST_USER, TEST_PASSWORD
            htpasswd = workdir / "htpasswd"
            htpasswd.write_text(_htpasswd_line(username, password))
            config["auth"] = {"htpasswd": {"realm": "crishim-test", "path": str(htpasswd)}}
        elif auth == "token":
            username, password = TEST_USER, TEST_PASSWORD
            token_server = TokenServer(workdir, username, password)
            config["auth"] = {
                "token": {
                    "realm": token_server.realm,
                    "service": TOKEN_SERVICE,
                    "issuer": TOKEN_ISSUER,
                    "rootcertbundle": str(token_server.cert_path),
                    "autoredirect": False,
                }
            }
        config_path = workdir / "config.yml"
        config_path.write_text(json.dumps(config))
        log = workdir / "registry.log"
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [str(REGISTRY_BIN), "serve", str(config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, log)
        yield RegistryServer(f"127.0.0.1:{port}", url, auth, username, password, store)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if token_server is not None:
            token_server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _require_registry() -> None:
    if not REGISTRY_BIN.exists():
        pytest.skip(f"{REGISTRY_BIN} missing: apt-get install docker-registry")


@pytest.fixture(scope="session")
def registry() -> Iterator[RegistryServer]:
    """An anonymous, plain-HTTP registry shared by the whole session."""
    _require_registry()
    with start_registry("none") as server:
        yield server


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[RegistryServer]:
    """A registry that needs htpasswd basic auth (TEST_USER / TEST_PASSWORD)."""
    _require_registry()
    with start_registry("basic") as server:
        yield server


@pytest.fixture(scope="session")
def token_registry() -> Iterator[RegistryServer]:
    """A registry that needs bearer tokens from our TokenServer (same credentials)."""
    _require_registry()
    with start_registry("token") as server:
        yield server
