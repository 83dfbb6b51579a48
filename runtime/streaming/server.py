"""The streaming HTTP server: hands out token URLs, then upgrades to SPDY/3.1 or WebSocket.

HTTP/1.1 is parsed by h11; after the upgrade the same socket carries SPDY frames
(ours) or WebSocket frames (wsproto). Routes: /exec/{token}, /attach/{token},
/portforward/{token}; a token works once and for `token_ttl` seconds, and any
other request gets 404, as with the kubelet's streaming server.

Only the listener is loaded at start-up: h11, wsproto and the SPDY and
sub-protocol code are imported by the first connection, so an idle daemon
(most nodes never exec into a container) does not hold them; ssl only with TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from crishim.runtime.streaming.errors import InvalidArgument
from crishim.runtime.streaming.streams import STREAM_CREATION_TIMEOUT, StreamBackend
from crishim.runtime.streaming.tokens import (
    DEFAULT_TTL,
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamRequest,
    TokenCache,
)

if TYPE_CHECKING:
    import ssl

    import h11

log = logging.getLogger(__name__)

PROTOCOL_HEADER = "x-stream-protocol-version"
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_READ_TIMEOUT = 30.0

ROUTES: dict[str, type[ExecRequest] | type[AttachRequest] | type[PortForwardRequest]] = {
    "exec": ExecRequest,
    "attach": AttachRequest,
    "portforward": PortForwardRequest,
}


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port'; port 0 picks a free port."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"streaming address {address!r} must be HOST:PORT, e.g. 127.0.0.1:0")
    return host.strip("[]") or "127.0.0.1", int(port)


class StreamingServer:
    """Serve Exec/Attach/PortForward streams for a `StreamBackend`.

    Call `start()` before handing out URLs and `stop()` on shutdown; the `url_for_*`
    methods back the CRI Exec, Attach and PortForward RPCs.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:0",
        backend: StreamBackend | None = None,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        token_ttl: float = DEFAULT_TTL,
        stream_creation_timeout: float = STREAM_CREATION_TIMEOUT,
    ) -> None:
        if backend is None:
            raise InvalidArgument("StreamingServer needs a backend that runs exec, attach and port-forward")
        if (tls_cert is None) != (tls_key is None):
            raise InvalidArgument("streaming TLS needs both a certificate and a key file")
        self._host, self._port = parse_address(address)
        self._backend = backend
        self._tls: ssl.SSLContext | None = None
        if tls_cert is not None and tls_key is not None:
            import ssl  # only with TLS: ssl and libcrypto stay out of a daemon without it

            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(tls_cert, tls_key)
        self._tokens = TokenCache(ttl=token_ttl)
        self._stream_timeout = stream_creation_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # Lifecycle.
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self._host, self._port, ssl=self._tls)
        sock = self._server.sockets[0]
        self._port = sock.getsockname()[1]
        log.info("streaming server listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._tls else 'http'}://{host}:{self._port}"

    # URLs for the CRI calls.
    def url_for_exec(
        self,
        container_id: str,
        cmd: list[str],
        tty: bool = False,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
    ) -> str:
        if not cmd:
            raise InvalidArgument("exec needs a command: cmd is empty")
        _check_stdio(tty, stdin, stdout, stderr)
        token = self._tokens.insert(ExecRequest(container_id, tuple(cmd), tty, stdin, stdout, stderr))
        return f"{self.base_url}/exec/{token}"

    def url_for_attach(
        self,
        container_id: str,
        tty: bool = False,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
    ) -> str:
        _check_stdio(tty, stdin, stdout, stderr)
        token = self._tokens.insert(AttachRequest(container_id, tty, stdin, stdout, stderr))
        return f"{self.base_url}/attach/{token}"

    def url_for_port_forward(self, sandbox_id: str, ports: list[int] | tuple[int, ...] = ()) -> str:
        for port in ports:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is out of range; name a TCP port 1-65535")
        token = self._tokens.insert(PortForwardRequest(sandbox_id, tuple(ports)))
        return f"{self.base_url}/portforward/{token}"

    # Connection handling.
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11  # the first connection loads the HTTP parser (see the module's docstring)

        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError, h11.ProtocolError) as exc:
            log.debug("streaming connection ended: %s", exc)
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h11
        from crishim.runtime.streaming import portforward

        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        raw = bytearray()
        request: h11.Request | None = None
        async with asyncio.timeout(REQUEST_READ_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    raw += data
                    if len(raw) > MAX_REQUEST_BYTES:
                        return await _respond(writer, conn, 413, "request too large")
                    conn.receive_data(data)
                    if not data and request is None:
                        return
                elif isinstance(event, h11.Request):
                    request = event
                elif event is h11.PAUSED or isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        if request is None:
            return
        headers = {}
        protocols: list[str] = []
        for name, value in request.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            if key == PROTOCOL_HEADER:
                protocols += [p.strip() for p in text.split(",") if p.strip()]
            headers[key] = text
        url = urlsplit(request.target.decode("latin-1"))
        parts = url.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ROUTES:
            return await _respond(writer, conn, 404, "not found")
        stream_request = self._tokens.consume(parts[1])
        if stream_request is None or not isinstance(stream_request, ROUTES[parts[0]]):
            return await _respond(writer, conn, 404, "streaming token not found, already used or expired")
        if isinstance(stream_request, PortForwardRequest):
            query = parse_qs(url.query)
            if "ports" in query or "port" in query:
                try:
                    ports = portforward.parse_ports(query.get("ports", []) + query.get("port", []))
                except InvalidArgument as exc:
                    return await _respond(writer, conn, 400, str(exc))
                stream_request = PortForwardRequest(stream_request.sandbox_id, ports)
        upgrade = headers.get("upgrade", "").lower()
        if "websocket" in upgrade:
            await self._serve_websocket(bytes(raw), reader, writer, stream_request)
        elif upgrade.startswith("spdy/3.1"):
            await self._serve_spdy(conn, protocols, reader, writer, stream_request)
        else:
            await _respond(writer, conn, 400, "upgrade to SPDY/3.1 or websocket required")

    async def _serve_spdy(
        self,
        conn: h11.Connection,
        offered: list[str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: StreamRequest,
    ) -> None:
        import h11
        from crishim.runtime.streaming import portforward, remotecommand
        from crishim.runtime.streaming.spdy import SpdyConnection

        is_pf = isinstance(request, PortForwardRequest)
        supported = (portforward.SPDY_PORTFORWARD,) if is_pf else remotecommand.SPDY_PROTOCOLS
        if offered:
            chosen = next((p for p in offered if p in supported), None)
            if chosen is None:
                body = f"none of the stream protocols {offered} is supported; use one of {list(supported)}"
                extra = [("X-Accept-Protocol-Version", p) for p in supported]
                return await _respond(writer, conn, 403, body, extra)
        else:
            # Clients that name no version speak the first one (the kubelet does the same).
            chosen = portforward.SPDY_PORTFORWARD if is_pf else remotecommand.SPDY_V1
        response_headers = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
        if offered:
            response_headers.append(("X-Stream-Protocol-Version", chosen))
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=response_headers)) or b"")
        await writer.drain()
        trailing, _closed = conn.trailing_data
        spdy = SpdyConnection(reader, writer, server=True, initial_data=bytes(trailing))
        spdy.start()
        try:
            if isinstance(request, PortForwardRequest):
                await portforward.serve_spdy(spdy, request, self._backend)
            else:
                await remotecommand.serve_spdy(spdy, chosen, request, self._backend, self._stream_timeout)
        finally:
            await spdy.close()

    async def _serve_websocket(
        self,
        raw: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: StreamRequest,
    ) -> None:
        from crishim.runtime.streaming import portforward, remotecommand
        from crishim.runtime.streaming.spdy import SpdyConnection
        from crishim.runtime.streaming.tunnel import WebSocketTunnel
        from crishim.runtime.streaming.websocket import ChannelConnection, handshake

        is_pf = isinstance(request, PortForwardRequest)
        supported: tuple[str, ...] = portforward.WEBSOCKET_PROTOCOLS if is_pf else remotecommand.WEBSOCKET_PROTOCOLS
        if is_pf:
            supported = (portforward.SPDY_TUNNEL_PORTFORWARD, *supported)
        accepted = await handshake(raw, reader, writer, supported)
        if accepted is None:
            return
        ws, _req, chosen = accepted
        if isinstance(request, PortForwardRequest) and chosen == portforward.SPDY_TUNNEL_PORTFORWARD:
            # client-go's SPDY-over-WebSocket dialer (crictl port-forward --transport websocket).
            tunnel = WebSocketTunnel(ws, reader, writer)
            spdy = SpdyConnection(tunnel, tunnel, server=True)
            spdy.start()
            try:
                await portforward.serve_spdy(spdy, request, self._backend)
            finally:
                await spdy.close()
            return
        channels = ChannelConnection(ws, reader, writer, chosen)
        channels.start()
        try:
            if isinstance(request, PortForwardRequest):
                await portforward.serve_websocket(channels, request, self._backend)
            else:
                await remotecommand.serve_websocket(channels, request, self._backend)
        finally:
            await channels.close()


def _check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout or stderr must be true")
    if tty and stderr:
        # A terminal merges both outputs into one stream; the kubelet refuses the same.
        raise InvalidArgument("tty and stderr cannot both be true: a terminal has a single output stream")


async def _respond(
    writer: asyncio.StreamWriter,
    conn: h11.Connection,
    status: int,
    message: str,
    extra_headers: list[tuple[str, str]] | None = None,
) -> None:
    import h11

    body = (message + "\n").encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *(extra_headers or []),
    ]
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers))
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError:
        return
    writer.write(data)
    await writer.drain()
