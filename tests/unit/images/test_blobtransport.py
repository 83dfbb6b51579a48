"""ReadintoTransport against real HTTP servers on 127.0.0.1: the standard library's
threaded server for well-behaved exchanges, raw sockets for servers that misbehave."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from crishim.images.blobtransport import ReadintoTransport

from tests.support.tls import self_signed

BODY = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /blob: BODY with a Content-Length; /chunked: BODY in chunks; /missing: a 404 with a
    body; /moved: a redirect to the URL in the server's `redirect_to`. Connections stay open."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.server.requests.append((self.path, dict(self.headers.items()), self.client_address[1]))
        if self.path == "/blob":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(BODY), 100_000):
                piece = BODY[start : start + 100_000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/moved":
            self.send_response(307)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            text = b'{"errors":[{"code":"BLOB_UNKNOWN"}]}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests: list[tuple[str, dict[str, str], int]]
    redirect_to = ""


@pytest.fixture
def start_server() -> Iterator[Callable[..., tuple[_Server, str]]]:
    servers: list[_Server] = []

    def start(tls: ssl.SSLContext | None = None) -> tuple[_Server, str]:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.requests = []
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        scheme = "https" if tls is not None else "http"
        return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _client(verify: ssl.SSLContext | bool = True, timeout: float = 30) -> httpx.Client:
    limits = httpx.Timeout(timeout)
    return httpx.Client(transport=ReadintoTransport(verify, limits), timeout=limits, follow_redirects=True)


def _read_all(response: httpx.Response, size: int = 300_000) -> bytes:
    readinto = response.extensions["readinto"]
    buffer = bytearray(size)
    parts = []
    while n := readinto(buffer):
        parts.append(bytes(buffer[:n]))
    return b"".join(parts)


def test_bodies_fill_the_callers_buffer_and_one_connection_serves_them_all(start_server) -> None:
    server, url = start_server()
    with _client() as client:
        for _ in range(3):
            with client.stream("GET", f"{url}/blob") as response:
                assert response.status_code == 200
                assert _read_all(response) == BODY
    assert [path for path, _, _ in server.requests] == ["/blob"] * 3
    assert len({port for _, _, port in server.requests}) == 1, "a connection was not reused"


def test_a_chunked_body_arrives_whole(start_server) -> None:
    _, url = start_server()
    with _client() as client, client.stream("GET", f"{url}/chunked") as response:
        assert _read_all(response, 65_536) == BODY


def test_an_error_body_is_read_by_httpx_itself(start_server) -> None:
    _, url = start_server()
    with _client() as client:
        response = client.get(f"{url}/missing")
    assert response.status_code == 404
    assert response.json() == {"errors": [{"code": "BLOB_UNKNOWN"}]}


def test_a_redirect_to_another_origin_is_followed_without_the_authorization(start_server) -> None:
    storage, storage_url = start_server()
    registry, registry_url = start_server()
    registry.redirect_to = f"{storage_url}/blob"
    with _client() as client:
        with client.stream("GET", f"{registry_url}/moved", headers={"Authorization": "Bearer secret"}) as response:
            assert _read_all(response) == BODY
    assert registry.requests[0][1].get("Authorization") == "Bearer secret"
    assert [path for path, _, _ in storage.requests] == ["/blob"]
    assert "Authorization" not in storage.requests[0][1], "credentials went to another origin"


def test_tls_is_verified_against_the_hosts_certificates(start_server, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    _, url = start_server(server_ctx)
    trusting = ssl.create_default_context(cafile=str(cert))
    with _client(trusting) as client, client.stream("GET", f"{url}/blob") as response:
        assert _read_all(response) == BODY
    with _client(True) as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(f"{url}/blob")
    with _client(False) as client:
        assert client.get(f"{url}/blob").content == BODY


def _raw_server(handle: Callable[[socket.socket, int], None], connections: int = 1) -> tuple[str, threading.Thread]:
    """A server answering `connections` connections with `handle(conn, index)`."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        with listener:
            for index in range(connections):
                conn, _ = listener.accept()
                with conn:
                    handle(conn, index)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/blob", thread


def _read_request(conn: socket.socket) -> bytes:
    request = b""
    while b"\r\n\r\n" not in request:
        got = conn.recv(4096)
        if not got:
            break
        request += got
    return request


def test_a_body_cut_short_is_a_protocol_error_not_an_end(start_server) -> None:
    def handle(conn: socket.socket, _index: int) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:1000])

    url, thread = _raw_server(handle)
    with _client() as client, client.stream("GET", url) as response:
        with pytest.raises(httpx.RemoteProtocolError, match=f"{len(BODY) - 1000} bytes before the end"):
            _read_all(response)
    thread.join(10)


def test_a_pooled_connection_the_server_dropped_is_replaced(start_server) -> None:
    """The server answers one request per connection and then closes it without saying so: the
    second request finds the pooled connection dead and goes over a new one."""

    def handle(conn: socket.socket, _index: int) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    url, thread = _raw_server(handle, connections=2)
    with _client() as client:
        assert client.get(url).content == b"hello"
        assert client.get(url).content == b"hello"
    thread.join(10)
    assert not thread.is_alive()


def test_a_stalled_server_is_a_read_timeout(start_server) -> None:
    release = threading.Event()

    def handle(conn: socket.socket, _index: int) -> None:
        _read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        release.wait(30)

    url, thread = _raw_server(handle)
    try:
        with _client(timeout=0.5) as client, client.stream("GET", url) as response:
            with pytest.raises(httpx.ReadTimeout):
                _read_all(response)
    finally:
        release.set()
        thread.join(10)


def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with _client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/blob")
