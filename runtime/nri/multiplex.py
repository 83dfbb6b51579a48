"""NRI's connection multiplexing: several logical byte streams over one unix socket.

An NRI plugin and the runtime share one socket but need two ttrpc connections:
the plugin serves its Plugin service on logical connection 1, the runtime serves
its Runtime service on logical connection 2. Every frame on the socket is an
8-byte header (big-endian connection ID, big-endian payload length) and the
payload. Opening a connection sends nothing; both ends just agree on the IDs.

Frames we send carry at most 4 KiB of payload: a Go peer reads each frame with
one read into its 4 KiB buffered reader and refuses a frame larger than that
buffer. Frames we receive may be any size up to ttrpc's message limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct

log = logging.getLogger("crishim.nri")

PLUGIN_SERVICE_CONN = 1
RUNTIME_SERVICE_CONN = 2

FRAME_HEADER = struct.Struct(">II")
MAX_SENT_PAYLOAD = 4096
# ttrpc's 10-byte header plus its 4 MiB message limit: nothing legitimate is larger.
MAX_RECEIVED_PAYLOAD = 10 + (4 << 20)
# Unread bytes one logical connection may hold before the peer counts as misbehaving.
MAX_BUFFERED = 4 * MAX_RECEIVED_PAYLOAD


class MuxClosed(ConnectionError):
    """The socket under the mux is gone (or the peer broke the framing)."""


class LogicalConnection:
    """One logical byte stream of a Mux: what a ttrpc client or server reads and writes."""

    def __init__(self, mux: Mux, conn_id: int) -> None:
        self._mux = mux
        self.conn_id = conn_id
        self._buffer = bytearray()
        self._readable = asyncio.Event()
        self._error: BaseException | None = None

    async def read_exactly(self, count: int) -> bytes:
        """The next `count` bytes; MuxClosed once the mux closed and fewer remain."""
        while len(self._buffer) < count:
            if self._error is not None:
                raise MuxClosed(str(self._error) or "connection closed")
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def write(self, data: bytes) -> None:
        await self._mux.write(self.conn_id, data)

    async def close(self) -> None:
        await self._mux.close()

    def feed(self, data: bytes) -> None:
        if len(self._buffer) + len(data) > MAX_BUFFERED:
            raise MuxClosed(f"connection {self.conn_id}: peer sent more than {MAX_BUFFERED} unread bytes")
        self._buffer += data
        self._readable.set()

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._readable.set()


class Mux:
    """The multiplexer over one socket; run() reads frames until the socket ends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._conns: dict[int, LogicalConnection] = {}
        self._write_lock = asyncio.Lock()
        self._closed = False
        self.error: BaseException | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def open(self, conn_id: int) -> LogicalConnection:
        if conn_id == 0:
            raise ValueError("connection ID 0 is reserved")
        conn = self._conns.get(conn_id)
        if conn is None:
            conn = self._conns[conn_id] = LogicalConnection(self, conn_id)
        return conn

    async def run(self) -> None:
        """Demultiplexes until EOF or a framing error, then closes every connection."""
        try:
            while True:
                header = await self._reader.readexactly(FRAME_HEADER.size)
                conn_id, size = FRAME_HEADER.unpack(header)
                if size > MAX_RECEIVED_PAYLOAD:
                    raise MuxClosed(f"peer sent a {size}-byte frame, more than {MAX_RECEIVED_PAYLOAD}")
                payload = await self._reader.readexactly(size)
                conn = self._conns.get(conn_id)
                if conn is not None:  # frames for a connection nobody opened are dropped
                    conn.feed(payload)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._fail(exc if isinstance(exc, MuxClosed) else MuxClosed("peer closed the connection"))
        except asyncio.CancelledError:
            self._fail(MuxClosed("connection closed"))
            raise
        finally:
            await self.close()

    async def write(self, conn_id: int, data: bytes) -> None:
        """Sends data on one logical connection, in frames a Go peer can read."""
        if self._closed:
            raise MuxClosed(str(self.error) if self.error else "connection closed")
        frames = bytearray()
        for start in range(0, max(len(data), 1), MAX_SENT_PAYLOAD):
            chunk = data[start : start + MAX_SENT_PAYLOAD]
            frames += FRAME_HEADER.pack(conn_id, len(chunk)) + chunk
        async with self._write_lock:
            try:
                self._writer.write(bytes(frames))
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                self._fail(MuxClosed(f"writing to the peer failed: {exc}"))
                await self.close()
                raise MuxClosed(str(exc)) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fail(MuxClosed("connection closed"))
        # Aborted, not flushed: a peer that stopped reading must not keep the close waiting.
        self._writer.transport.abort()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        for conn in self._conns.values():
            conn.fail(error)
