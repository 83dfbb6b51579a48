"""Test clients for the streaming server: SPDY/3.1 and WebSocket, over raw asyncio sockets.

They behave like client-go's remotecommand and portforward clients: the SPDY
client opens the error stream first, then stdin/stdout/stderr/resize, and reads
the v4 Status JSON from the error stream; the WebSocket client speaks the channel
protocols, including v5's stdin close signal and the base64 variants.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
from crishim.runtime.streaming.spdy import SpdyConnection, SpdyStream
from crishim.runtime.streaming.streams import TerminalSize
from crishim.runtime.streaming.websocket import Fragments, received_events
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

CLIENT_WINDOW = 256 * 1024


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


@dataclass
class ExecResult:
    stdout: bytes = b""
    stderr: bytes = b""
    error: bytes = b""
    protocol: str = ""

    @property
    def status(self) -> dict[str, Any]:
        return json.loads(self.error) if self.error else {}

    @property
    def exit_code(self) -> int:
        """Exit code as client-go derives it from the v4 Status."""
        status = self.status
        if not status or status.get("status") == "Success":
            return 0
        for cause in status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
        raise AssertionError(f"status without exit code: {status}")


@dataclass
class ResizeScript:
    """Send `size`, then `after` on stdin.

    The resize and the input travel on separate streams, so the input may reach the
    process before the terminal has its new size: a command that reports the size
    waits for it first (`when_size`).
    """

    size: TerminalSize
    after: bytes = b""


def when_size(size: TerminalSize, command: str) -> str:
    """Shell text that waits until the terminal is `size` (`stty size`), then runs `command`."""
    return f'until [ "$(stty size)" = "{size.height} {size.width}" ]; do sleep 0.05; done; {command}'


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    parts = urlsplit(url)
    ctx: ssl.SSLContext | None = None
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if ctx else 80)
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return reader, writer, target


# ---------------------------------------------------------------- SPDY


async def spdy_connect(
    url: str, protocols: Sequence[str], *, method: str = "POST", flow_control: bool = True
) -> tuple[SpdyConnection, str]:
    """Upgrade to SPDY/3.1; returns the connection and the negotiated protocol."""
    reader, writer, target = await _open(url)
    http = h11.Connection(h11.CLIENT)
    headers = [("Host", urlsplit(url).netloc), ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    headers += [("X-Stream-Protocol-Version", p) for p in protocols]
    writer.write(http.send(h11.Request(method=method, target=target, headers=headers)) or b"")
    writer.write(http.send(h11.EndOfMessage()) or b"")
    await writer.drain()
    body = b""
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            http.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            chosen = dict((k.decode().lower(), v.decode()) for k, v in event.headers).get(
                "x-stream-protocol-version", ""
            )
            break
        if isinstance(event, h11.Response):
            status = event.status_code
            while not isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                event = http.next_event()
                if event is h11.NEED_DATA:
                    http.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Data):
                    body += event.data
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            raise HTTPStatusError(status, body)
        if isinstance(event, h11.ConnectionClosed):
            writer.close()
            raise HTTPStatusError(0, b"connection closed")
    trailing, _ = http.trailing_data
    conn = SpdyConnection(reader, writer, server=False, initial_data=bytes(trailing))
    conn.start()
    if flow_control:
        await conn.send_settings(CLIENT_WINDOW)
    return conn, chosen


async def _collect(stream: SpdyStream | None) -> bytes:
    if stream is None:
        return b""
    parts = []
    while chunk := await stream.read():
        parts.append(chunk)
    return b"".join(parts)


async def spdy_exec(
    url: str,
    *,
    protocol: str = "v4.channel.k8s.io",
    stdin: bytes | None = None,
    stdout: bool = True,
    stderr: bool = True,
    tty: bool = False,
    resizes: Sequence[ResizeScript] = (),
    close_stdin: bool = True,
    time_limit: float = 20.0,
) -> ExecResult:
    """Drive one exec/attach session like client-go's v2-v4 stream protocols."""
    async with asyncio.timeout(time_limit):
        conn, chosen = await spdy_connect(url, [protocol])
        try:
            error = await conn.open_stream({"streamtype": ["error"]})
            await error.close()  # the client never writes on the error stream
            sin = await conn.open_stream({"streamtype": ["stdin"]}) if stdin is not None else None
            sout = await conn.open_stream({"streamtype": ["stdout"]}, fin=True) if stdout else None
            serr = await conn.open_stream({"streamtype": ["stderr"]}, fin=True) if stderr and not tty else None
            wants_resize = tty and protocol in ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io")
            rsz = await conn.open_stream({"streamtype": ["resize"]}) if wants_resize else None
            readers = [asyncio.create_task(_collect(s)) for s in (sout, serr, error)]
            if sin is not None:
                if stdin:
                    await sin.write(stdin)
                for script in resizes:
                    assert rsz is not None
                    size = script.size
                    await rsz.write(json.dumps({"Width": size.width, "Height": size.height}).encode() + b"\n")
                    if script.after:
                        await sin.write(script.after)
                if close_stdin:
                    await sin.close()
            elif rsz is not None:
                for script in resizes:
                    await rsz.write(json.dumps({"Width": script.size.width, "Height": script.size.height}).encode())
            out, err, status = await asyncio.gather(*readers)
            return ExecResult(out, err, status, chosen)
        finally:
            await conn.close()


async def spdy_port_forward(
    conn: SpdyConnection, port: int, request_id: int, payload: bytes, *, half_close: bool = True
) -> tuple[bytes, bytes]:
    """One forwarded TCP connection over an existing portforward.k8s.io connection."""
    common = {"port": [str(port)], "requestid": [str(request_id)]}
    error = await conn.open_stream({"streamtype": ["error"], **common})
    await error.close()
    data = await conn.open_stream({"streamtype": ["data"], **common})
    err_task = asyncio.create_task(_collect(error))
    await data.write(payload)
    if half_close:
        await data.close()
    received = await _collect(data)
    return received, await err_task


# ---------------------------------------------------------------- WebSocket


class WebSocketClient:
    """A channel-protocol WebSocket client; `recv()` yields (channel, payload) until the close."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: WSConnection, protocol: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._ws = ws
        self.protocol = protocol
        self._base64 = "base64" in protocol
        self._fragments = Fragments()
        self._messages: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())
        self.close_code: int | None = None

    @classmethod
    async def connect(cls, url: str, subprotocols: Sequence[str]) -> WebSocketClient:
        reader, writer, target = await _open(url)
        ws = WSConnection(ConnectionType.CLIENT)
        writer.write(ws.send(Request(host=urlsplit(url).netloc, target=target, subprotocols=list(subprotocols))))
        await writer.drain()
        body = b""
        status = 0
        try:
            async for event in received_events(reader, ws):
                if isinstance(event, AcceptConnection):
                    return cls(reader, writer, ws, event.subprotocol or "")
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        break
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        break
            raise HTTPStatusError(status, body)
        except BaseException:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            raise

    async def send(self, channel: int, data: bytes) -> None:
        if self._base64:
            message: Message[Any] = TextMessage(data=chr(ord("0") + channel) + base64.b64encode(data).decode())
        else:
            message = BytesMessage(data=bytes([channel]) + data)
        self._writer.write(self._ws.send(message))
        await self._writer.drain()

    async def close_channel(self, channel: int) -> None:
        """v5.channel.k8s.io: half-close one channel (stdin)."""
        self._writer.write(self._ws.send(BytesMessage(data=bytes([255, channel]))))
        await self._writer.drain()

    async def recv(self) -> tuple[int, bytes] | None:
        return await self._messages.get()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.write(self._ws.send(CloseConnection(code=1000)))
            await self._writer.drain()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def _loop(self) -> None:
        try:
            async for event in received_events(self._reader, self._ws):
                if isinstance(event, Message):
                    whole = self._fragments.add(event)
                    if whole is not None:
                        self._deliver(whole)
                elif isinstance(event, Ping):
                    self._writer.write(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
                    with contextlib.suppress(Exception):
                        self._writer.write(self._ws.send(event.response()))
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self._messages.put_nowait(None)

    def _deliver(self, message: bytes | str) -> None:
        if isinstance(message, str):
            raw = bytes([ord(message[0]) - ord("0")]) + base64.b64decode(message[1:]) if message else b""
        else:
            raw = message
        if raw:
            self._messages.put_nowait((raw[0], raw[1:]))


@dataclass
class ChannelCapture:
    channels: dict[int, bytearray] = field(default_factory=dict)
    first_frames: dict[int, bytes] = field(default_factory=dict)

    def add(self, channel: int, data: bytes) -> None:
        if channel not in self.first_frames:
            self.first_frames[channel] = data
        self.channels.setdefault(channel, bytearray()).extend(data)

    def get(self, channel: int) -> bytes:
        return bytes(self.channels.get(channel, b""))


async def ws_exec(
    url: str,
    *,
    protocol: str = "v5.channel.k8s.io",
    stdin: bytes | None = None,
    tty: bool = False,
    resizes: Sequence[ResizeScript] = (),
    close_stdin: bool = True,
    time_limit: float = 20.0,
) -> ExecResult:
    """Drive one exec/attach session over the WebSocket channel protocol."""
    async with asyncio.timeout(time_limit):
        client = await WebSocketClient.connect(url, [protocol])
        capture = ChannelCapture()
        try:
            if stdin:
                await client.send(0, stdin)
            for script in resizes:
                await client.send(4, json.dumps({"Width": script.size.width, "Height": script.size.height}).encode())
                if script.after:
                    await client.send(0, script.after)
            if stdin is not None and close_stdin and client.protocol == "v5.channel.k8s.io":
                await client.close_channel(0)
            while (item := await client.recv()) is not None:
                capture.add(*item)
        finally:
            await client.close()
        return ExecResult(capture.get(1), capture.get(2), capture.get(3), client.protocol)


async def ws_port_forward(
    url: str, payload: bytes, *, protocol: str = "v4.channel.k8s.io", time_limit: float = 20.0
) -> ChannelCapture:
    """Forward over WebSocket: send `payload` on data channel 0 and collect every channel until close."""
    async with asyncio.timeout(time_limit):
        client = await WebSocketClient.connect(url, [protocol])
        capture = ChannelCapture()
        try:
            await client.send(0, payload)
            while (item := await client.recv()) is not None:
                capture.add(*item)
        finally:
            await client.close()
        return capture


def port_prefix(port: int) -> bytes:
    return struct.pack("<H", port)
