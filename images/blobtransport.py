"""An httpx transport for layer bodies that reads straight into the caller's buffer.

httpx's own transport (httpcore and h11) hands a body over as a new `bytes` of at most
64 KiB per socket read, copied twice on its way out of h11's receive buffer; for a
layer that is several copies, thousands of Python-level events and as many
allocations per 200 MB, all of it holding the GIL that the unpack threads share.
The standard library's `http.client` reads a body with `readinto`: one `recv_into`
per socket read, into memory the caller owns, no copy and no allocation. So layer
bodies go through this transport, and everything above it stays httpx's: the
client's redirects, authorization, timeouts and error types, and the registry
client's retries (registry.py). Requests through a proxy keep httpx's transport
(httpx mounts one for every proxy it finds in the environment), and their bodies
are read chunk by chunk as before.

A response carries two extensions beside httpx's: `readinto`, the body's
`readinto(buffer) -> int` (0 at the end; a body cut short raises
`httpx.RemoteProtocolError`), and `network_stream`, whose `get_extra_info("socket")`
lets another thread shut the connection down to end a blocked read.

Connections are kept alive and reused per (scheme, host, port) when a body was
read to its end; a pooled connection the server closed meanwhile is retried once
on a fresh one, as a GET may be.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections.abc import Iterator

import httpx

_Origin = tuple[str, str, int]
BODY_CHUNK = 64 << 10  # the chunk size of iteration (error bodies, proxied bodies go elsewhere)


class _Socket:
    """What httpx's `network_stream` extension offers, as far as crishim asks of it."""

    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock

    def get_extra_info(self, info: str) -> socket.socket | None:
        return self._sock if info == "socket" else None


def _transport_error(exc: BaseException, reading: bool) -> httpx.TransportError:
    """http.client's and the socket's errors as the httpx errors the registry client handles."""
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return httpx.ReadTimeout(str(exc)) if reading else httpx.ConnectTimeout(str(exc))
    if isinstance(exc, http.client.HTTPException):  # IncompleteRead, RemoteDisconnected, BadStatusLine, ...
        return httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}")
    return httpx.ReadError(repr(exc)) if reading else httpx.ConnectError(repr(exc))


class _Body(httpx.SyncByteStream):
    """A response body over one pooled connection: `readinto` for the unpack threads,
    iteration for httpx (error bodies); the connection goes back to the pool when the
    body was read to its end."""

    def __init__(
        self,
        transport: ReadintoTransport,
        origin: _Origin,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp
        self._broken = False  # the body ended early or failed: the connection is not reused

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Fills `buffer` (less only at the end of the body); 0 at the end."""
        if self._conn is None:
            return 0
        try:
            n = self._resp.readinto(buffer)
        except (OSError, http.client.HTTPException) as exc:
            self._broken = True
            self.close()
            raise _transport_error(exc, reading=True) from exc
        if n == 0 and len(buffer) and self._resp.length:
            # http.client reports a connection closed before Content-Length bytes as a plain end
            # (and counts the response closed).
            self._broken = True
            self.close()
            raise httpx.RemoteProtocolError(
                f"the server closed the connection {self._resp.length} bytes before the end of the body"
            )
        return n

    def __iter__(self) -> Iterator[bytes]:
        buffer = bytearray(BODY_CHUNK)
        while n := self.readinto(buffer):
            yield bytes(buffer[:n])

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        reusable = self._resp.isclosed() and not self._broken and conn.sock is not None
        if not reusable:
            self._resp.close()
        self._transport.release(self._origin, conn, reusable)


class ReadintoTransport(httpx.BaseTransport):
    """HTTP/1.1 over `http.client`, for plain and TLS registries; see the module docstring."""

    def __init__(self, verify: ssl.SSLContext | bool, timeout: httpx.Timeout, max_idle: int = 16) -> None:
        self._verify = verify
        self._ssl_context: ssl.SSLContext | None = None  # made for the first TLS connection
        self._connect_timeout = timeout.connect
        self._read_timeout = timeout.read
        self._max_idle = max_idle
        self._idle: dict[_Origin, list[http.client.HTTPConnection]] = {}
        # Connections with a response out: closed with the transport too, so that a response
        # nobody closed (its reader gone with a cancelled pull) does not keep a socket open.
        self._busy: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _new_connection(self, origin: _Origin) -> http.client.HTTPConnection:
        scheme, host, port = origin
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self._connect_timeout, context=self._tls())
        elif scheme == "http":
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
        else:
            raise httpx.UnsupportedProtocol(f"the URL scheme {scheme!r} is not http or https")
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _transport_error(exc, reading=False) from exc
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(self._read_timeout)
        return conn

    def _tls(self) -> ssl.SSLContext:
        """The TLS settings httpx would use for `verify` (a context, or True / False)."""
        if self._ssl_context is None:
            verify = self._verify
            self._ssl_context = (
                verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
            )
        return self._ssl_context

    def _pooled(self, origin: _Origin) -> http.client.HTTPConnection | None:
        """An idle connection the server has not closed (a closed one reads as readable)."""
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            sock = conn.sock
            if sock is not None and not select.select([sock], [], [], 0)[0]:
                return conn
            conn.close()

    def release(self, origin: _Origin, conn: http.client.HTTPConnection, reusable: bool) -> None:
        """The response on `conn` is done with: the connection goes back to the pool, or is closed."""
        with self._lock:
            self._busy.discard(conn)
            idle = self._idle.setdefault(origin, [])
            if reusable and not self._closed and len(idle) < self._max_idle:
                idle.append(conn)
                return
        conn.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        origin: _Origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        body = request.read()
        conn = self._pooled(origin)
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._new_connection(origin)
            sock = conn.sock  # before the response: one that closes the connection takes it over
            with self._lock:
                self._busy.add(conn)
            try:
                resp = self._exchange(conn, request, body)
                break
            except (OSError, http.client.HTTPException) as exc:
                self.release(origin, conn, reusable=False)
                conn = None
                if reused and isinstance(exc, ConnectionError | http.client.RemoteDisconnected):
                    reused = False  # the server dropped an idle connection as it was taken: once more, fresh
                    continue
                raise _transport_error(exc, reading=True) from exc
        stream = _Body(self, origin, conn, resp)
        return httpx.Response(
            resp.status,
            headers=resp.getheaders(),
            stream=stream,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": resp.reason.encode("ascii", "replace"),
                "readinto": stream.readinto,
                "network_stream": _Socket(sock),
            },
        )

    @staticmethod
    def _exchange(conn: http.client.HTTPConnection, request: httpx.Request, body: bytes) -> http.client.HTTPResponse:
        conn.putrequest(request.method, request.url.raw_path.decode("ascii"), skip_host=True, skip_accept_encoding=True)
        for name, value in request.headers.raw:
            conn.putheader(name.decode("latin-1"), value)
        conn.endheaders(body or None)
        return conn.getresponse()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
            busy, self._busy = self._busy, set()
        for conn in [*busy, *(conn for conns in idle.values() for conn in conns)]:
            conn.close()
