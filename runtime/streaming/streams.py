"""The byte-stream types the server and its backends exchange, and the backend protocol.

Every protocol (SPDY streams, WebSocket channels) and every backend (runc pipes,
ptys, conmon's attach socket, TCP into a netns) meets at these two tiny
interfaces, so a backend never knows which wire protocol the client spoke.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# How long a client has to open the streams it announced (the kubelet's streamCreationTimeout).
# Here rather than in remotecommand.py so that the server's listener does not load the protocols.
STREAM_CREATION_TIMEOUT = 30.0


@runtime_checkable
class ByteReader(Protocol):
    async def read(self) -> bytes:
        """Return the next chunk; b"" means end of stream (and stays so)."""
        ...


@runtime_checkable
class ByteWriter(Protocol):
    async def write(self, data: bytes) -> None:
        """Send all of `data`; silently drops data once the peer has gone."""
        ...

    async def close(self) -> None:
        """Half-close: the reader on the other side sees end of stream."""
        ...


@dataclass(frozen=True, slots=True)
class TerminalSize:
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class SessionStreams:
    """The client's side of an exec or attach session.

    A stream the client did not ask for is None; with a terminal, stderr is merged
    into stdout and `resize` yields the sizes the client sends.
    """

    tty: bool
    stdin: ByteReader | None
    stdout: ByteWriter | None
    stderr: ByteWriter | None
    resize: AsyncIterator[TerminalSize]


class StreamBackend(Protocol):
    """What the server needs from the runtime (runtime/streaming_backend.py: runc, conmon, netns).

    Backends must stop their work (kill an exec'd process, close sockets) when the
    awaiting task is cancelled: the server cancels when the client goes away.
    """

    async def exec(self, container_id: str, cmd: list[str], streams: SessionStreams) -> int: ...

    async def attach(self, container_id: str, streams: SessionStreams) -> None: ...

    async def port_forward(self, sandbox_id: str, port: int, reader: ByteReader, writer: ByteWriter) -> None: ...


class Pipe:
    """An in-memory ByteReader + ByteWriter pair.

    `write` waits while more than `high_water` bytes are unread so a fast producer
    follows a slow consumer; `feed_nowait` never waits, for protocol read loops that
    must keep serving other streams. `on_read(n)` reports consumed bytes (SPDY uses
    it to send WINDOW_UPDATE only for data the application really took).
    """

    def __init__(self, high_water: int = 1 << 20, on_read: Callable[[int], None] | None = None) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._high_water = high_water
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._on_read = on_read

    @property
    def closed(self) -> bool:
        return self._closed

    def feed_nowait(self, data: bytes) -> None:
        if self._closed or not data:
            return
        self._chunks.append(bytes(data))
        self._size += len(data)
        self._readable.set()
        if self._size >= self._high_water:
            self._writable.clear()

    async def write(self, data: bytes) -> None:
        await self._writable.wait()
        self.feed_nowait(data)

    def close_nowait(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()

    async def close(self) -> None:
        self.close_nowait()

    async def read(self) -> bytes:
        while not self._chunks:
            if self._closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._size < self._high_water:
            self._writable.set()
        if self._on_read is not None:
            self._on_read(len(data))
        return data


async def resize_events(reader: ByteReader | None) -> AsyncIterator[TerminalSize]:
    """Decode the resize stream: back-to-back JSON objects {"Width": w, "Height": h}.

    client-go writes them with a JSON encoder, so objects may arrive split across
    frames or several in one frame; nothing but whitespace separates them.
    """
    if reader is None:
        return
    decoder = json.JSONDecoder()
    buf = ""
    while True:
        chunk = await reader.read()
        if not chunk:
            return
        buf += chunk.decode("utf-8", "replace")
        while True:
            buf = buf.lstrip()
            if not buf:
                break
            try:
                obj, end = decoder.raw_decode(buf)
            except json.JSONDecodeError:
                break
            buf = buf[end:]
            if isinstance(obj, dict):
                width, height = obj.get("Width", 0), obj.get("Height", 0)
                if isinstance(width, int) and isinstance(height, int) and width >= 0 and height >= 0:
                    yield TerminalSize(width=width, height=height)


async def no_resize() -> AsyncIterator[TerminalSize]:
    """An empty resize iterator for sessions without a terminal."""
    return
    yield  # pragma: no cover - makes this an async generator
