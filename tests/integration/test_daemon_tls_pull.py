"""An idle daemon holds no TLS library, and still pulls from an https registry.

`crishim serve` imports asyncio without ssl (runtime/lazyssl.py) and hashes nothing at
start, so libssl and libcrypto are not mapped until the first pull; that pull, over TLS
to a registry with its own CA (hosts.toml `ca`), must work as if they had always been.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from crishim.cri_api import api_pb2
from crishim.images import build as b

from tests.support.cri import PULL_TIMEOUT
from tests.support.daemon import running_daemon
from tests.support.tls import self_signed

pytestmark = pytest.mark.root

TLS_LIBRARIES = ("libssl.so", "libcrypto.so")


def mapped_tls_libraries(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {lib for lib in TLS_LIBRARIES if lib in maps}


@contextmanager
def https_registry(image: b.BuiltImage, cert: Path, key: Path) -> Iterator[tuple[int, list[str]]]:
    """Serves `image` as app:1 over TLS; yields its port and the paths it was asked for."""
    blobs = {image.config_digest: image.config} | {layer.digest: layer.data for layer in image.layers}
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, with_body: bool) -> None:
            asked.append(self.path)
            body, ctype = b"{}", "application/json"
            if "/manifests/" in self.path:
                body, ctype = image.manifest, image.media_type
            elif "/blobs/" in self.path:
                found = blobs.get(self.path.rsplit("/", 1)[1])
                if found is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, ctype = found, "application/octet-stream"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(False)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], asked
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_idle_daemon_maps_no_tls_library_yet_pulls_over_tls(tmp_path: Path) -> None:
    image = b.build_image([[b.regular("hello", b"over tls\n")]])
    cert, key = self_signed(tmp_path, "127.0.0.1")
    with https_registry(image, cert, key) as (port, asked), running_daemon() as daemon:
        assert daemon.proc is not None
        assert mapped_tls_libraries(daemon.proc.pid) == set()
        hosts = daemon.dir / "certs.d" / f"127.0.0.1:{port}"
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(f'server = "https://127.0.0.1:{port}"\nca = "{cert}"\n')
        ref = f"127.0.0.1:{port}/app:1"

        pulled = daemon.images.PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=PULL_TIMEOUT
        )

        assert pulled.image_ref == image.config_digest
        assert any(path.endswith(image.layers[0].digest) for path in asked), asked
        assert mapped_tls_libraries(daemon.proc.pid) == set(TLS_LIBRARIES)
