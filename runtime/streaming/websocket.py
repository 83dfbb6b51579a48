"""WebSocket channel multiplexing (the Kubernetes `channel.k8s.io` family) over wsproto.

Every message carries one channel byte, then payload. Binary protocols send the
byte as is; the base64 protocols send text messages whose first character is
'0'+channel and whose payload is base64. v5.channel.k8s.io adds a client message
[255, channel] that half-closes one channel (how stdin reaches EOF).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from crishim.runtime.streaming.streams import Pipe
from crishim.runtime.streaming.transport import close_transport
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

V5_CHANNEL = "v5.channel.k8s.io"
V4_CHANNEL = "v4.channel.k8s.io"
V4_BASE64_CHANNEL = "v4.base64.channel.k8s.io"
CHANNEL = "channel.k8s.io"
BASE64_CHANNEL = "base64.channel.k8s.io"
PORTFORWARD = "portforward.k8s.io"

STREAM_CLOSE = 255
MAX_MESSAGE = 16 * 1024 * 1024


def is_base64(protocol: str) -> bool:
    return "base64" in protocol


class MessageTooBig(Exception):
    """A message grew past the limit before its last frame arrived."""


class Fragments:
    """Joins the frames of one message: wsproto hands each frame on as it arrives.

    `limit` (characters or bytes) bounds what a peer can make us hold.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._parts: list[bytes | str] = []
        self._size = 0

    def add(self, event: Message[Any]) -> bytes | str | None:
        """The whole message once `event` is its last frame, else None; MessageTooBig past the limit."""
        self._parts.append(event.data)
        self._size += len(event.data)
        if self._limit is not None and self._size > self._limit:
            raise MessageTooBig(f"message passed {self._limit} after {self._size}")
        if not event.message_finished:
            return None
        whole: bytes | str = (
            "".join(p for p in self._parts if isinstance(p, str))
            if isinstance(event, TextMessage)
            else b"".join(p for p in self._parts if isinstance(p, bytes))
        )
        self._parts, self._size = [], 0
        return whole


async def received_events(reader: asyncio.StreamReader, ws: WSConnection) -> AsyncIterator[Event]:
    """wsproto's events for what the peer sends, until it closes its side of the socket."""
    while True:
        data = await reader.read(65536)
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            yield event


def choose_subprotocol(offered: list[str], supported: tuple[str, ...]) -> str | None:
    """First protocol in the client's order that we speak; "" when the client offered none."""
    if not offered:
        return ""
    for proto in offered:
        if proto in supported:
            return proto
    return None


async def handshake(
    raw_request: bytes,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    supported: tuple[str, ...],
) -> tuple[WSConnection, Request, str] | None:
    """Run the server handshake on the bytes of the HTTP request already read.

    Returns the connection, the request and the chosen subprotocol ("" for none), or
    None after rejecting a client that offered only protocols we do not speak.
    """
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(raw_request)
    request: Request | None = None
    while request is None:
        for event in ws.events():
            if isinstance(event, Request):
                request = event
                break
        else:
            data = await reader.read(65536)
            if not data:
                return None
            ws.receive_data(data)
    chosen = choose_subprotocol(list(request.subprotocols), supported)
    if chosen is None:
        body = (
            f"none of the requested subprotocols {list(request.subprotocols)} is supported; "
            f"use one of {list(supported)}"
        )
        writer.write(
            ws.send(
                RejectConnection(
                    status_code=400,
                    headers=[(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
                    has_body=True,
                )
            )
        )
        writer.write(ws.send(RejectData(data=body.encode(), body_finished=True)))
        await writer.drain()
        return None
    writer.write(ws.send(AcceptConnection(subprotocol=chosen or None)))
    await writer.drain()
    return ws, request, chosen


class ChannelConnection:
    """Demultiplexes an accepted WebSocket into per-channel readers and writers."""

    def __init__(
        self,
        ws: WSConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: str,
    ) -> None:
        self._ws = ws
        self._reader = reader
        self._writer = writer
        self.protocol = protocol
        self._base64 = is_base64(protocol)
        self._stream_close = protocol == V5_CHANNEL
        self._readers: dict[int, Pipe] = {}
        self._closed = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._read_task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def reader(self, channel: int) -> Pipe:
        """The inbound side of a channel; frames for channels nobody asked for are dropped."""
        pipe = self._readers.get(channel)
        if pipe is None:
            pipe = self._readers[channel] = Pipe()
            if self.closed:
                pipe.close_nowait()
        return pipe

    def writer(self, channel: int) -> ChannelWriter:
        return ChannelWriter(self, channel)

    def start(self) -> None:
        self._read_task = asyncio.create_task(self._read_loop())

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def send(self, channel: int, data: bytes) -> None:
        if self.closed:
            return
        message: BytesMessage | TextMessage
        if self._base64:
            message = TextMessage(data=chr(ord("0") + channel) + base64.b64encode(data).decode())
        else:
            message = BytesMessage(data=bytes([channel]) + data)
        await self._send_event(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame, give the peer a moment to answer, then drop the transport."""
        if not self.closed:
            with contextlib.suppress(LocalProtocolError):
                await self._send_event(CloseConnection(code=code, reason=reason))
            if self._read_task is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._closed.wait()), 2.0)
        self._teardown()
        await close_transport(self._writer, self._read_task)

    async def _send_event(self, event: Event) -> None:
        try:
            self._writer.write(self._ws.send(event))
            async with self._drain_lock:
                await self._writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            self._teardown()

    async def _read_loop(self) -> None:
        fragments = Fragments(MAX_MESSAGE)
        try:
            async for event in received_events(self._reader, self._ws):
                if isinstance(event, Message):
                    try:
                        whole = fragments.add(event)
                    except MessageTooBig:
                        await self._send_event(CloseConnection(code=1009, reason="message too big"))
                        return
                    if whole is not None:
                        self._dispatch(whole)
                elif isinstance(event, Ping):
                    await self._send_event(event.response())
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(LocalProtocolError):
                        await self._send_event(event.response())
                    return
        except (ConnectionError, OSError, RemoteProtocolError) as exc:
            log.debug("websocket read loop ended: %s", exc)
        finally:
            self._teardown()

    def _dispatch(self, message: bytes | str) -> None:
        raw = message.encode("latin-1", "replace") if isinstance(message, str) else message
        if not raw:
            return
        if self._stream_close and raw[0] == STREAM_CLOSE:
            if len(raw) == 2 and raw[1] in self._readers:
                self._readers[raw[1]].close_nowait()
            return
        channel = raw[0]
        payload = raw[1:]
        if self._base64:
            channel -= ord("0")
            try:
                payload = base64.b64decode(payload, validate=False)
            except (binascii.Error, ValueError):
                log.debug("dropping undecodable base64 frame on channel %d", channel)
                return
        pipe = self._readers.get(channel)
        if pipe is not None:
            pipe.feed_nowait(payload)

    def _teardown(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for pipe in self._readers.values():
            pipe.close_nowait()


class ChannelWriter:
    """The outbound side of one channel."""

    def __init__(self, conn: ChannelConnection, channel: int) -> None:
        self._conn = conn
        self._channel = channel
        self._closed = False

    async def write(self, data: bytes) -> None:
        if self._closed:
            return
        view = memoryview(data)
        # Bounded frames keep one busy channel from monopolizing the socket.
        for off in range(0, max(len(view), 1), 64 * 1024):
            await self._conn.send(self._channel, bytes(view[off : off + 64 * 1024]))

    async def close(self) -> None:
        # The channel protocol has no server-side half-close; the peer sees the end
        # when the connection closes.
        self._closed = True
