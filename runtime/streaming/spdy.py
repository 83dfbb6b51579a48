"""SPDY/3.1 framing and a multiplexed connection, enough for Kubernetes streaming.

Frame layouts follow the SPDY Protocol Draft 3.1. kubectl, crictl and the kubelet
speak it through Go's spdystream, which never sends WINDOW_UPDATE; so we only hold
our sends to the peer's windows once the peer has shown it does flow control (sent
a SETTINGS initial window or a WINDOW_UPDATE). We always advertise our own
consumption, so flow-controlled peers (our test client) never stall.

One `SpdyConnection` serves both roles: the server accepts streams, the test client
opens them; stream ids are odd for the client and even for the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time

from crishim.runtime.streaming.errors import ProtocolError
from crishim.runtime.streaming.spdy_frames import (  # noqa: F401 - the frame vocabulary, re-exported
    CANCEL,
    DEFAULT_WINDOW,
    FLAG_FIN,
    FLAG_SETTINGS_CLEAR,
    FLAG_UNIDIRECTIONAL,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    HEADERS,
    INTERNAL_ERROR,
    INVALID_STREAM,
    MAX_DATA_CHUNK,
    MAX_FRAME_LENGTH,
    MAX_HEADER_BLOCK,
    PING,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SYN_REPLY,
    SYN_STREAM,
    VERSION,
    WINDOW_UPDATE,
    ByteSink,
    ByteSource,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeaderCodec,
    Headers,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    SynReplyFrame,
    SynStreamFrame,
    UnknownControlFrame,
    WindowUpdateFrame,
    control_frame,
    data_frame,
    decode_frame,
    encode_frame,
    parse_header_block,
)
from crishim.runtime.streaming.streams import Pipe
from crishim.runtime.streaming.transport import close_transport

log = logging.getLogger(__name__)


class SpdyStream:
    """One SPDY stream: a ByteReader for what the peer sends and a ByteWriter towards it."""

    def __init__(self, conn: SpdyConnection, stream_id: int, headers: Headers, send_window: int) -> None:
        self.id = stream_id
        self.headers = headers
        self._conn = conn
        self._inbound = Pipe(high_water=1 << 62, on_read=self._consumed)
        self._send_window = send_window
        self._unacked = 0
        self.local_closed = False
        self.remote_closed = False
        self.was_reset = False
        self.replied = asyncio.Event()
        self.reset_event = asyncio.Event()
        self.reply_headers: Headers = {}

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    async def read(self) -> bytes:
        data: bytes = await self._inbound.read()
        return data

    async def write(self, data: bytes) -> None:
        view = memoryview(bytes(data))
        while view:
            if self.local_closed or self.was_reset or self._conn.closed:
                return
            n = min(len(view), MAX_DATA_CHUNK)
            if self._conn.peer_flow_control:
                while min(self._send_window, self._conn.session_send_window) <= 0:
                    if self.local_closed or self.was_reset or self._conn.closed:
                        return
                    await self._conn.window_changed()
                n = min(n, self._send_window, self._conn.session_send_window)
                self._send_window -= n
                self._conn.session_send_window -= n
            await self._conn.send(DataFrame(self.id, 0, bytes(view[:n])))
            view = view[n:]

    async def close(self) -> None:
        """Half-close our side (DATA with FIN)."""
        if self.local_closed or self.was_reset or self._conn.closed:
            return
        self.local_closed = True
        await self._conn.send(DataFrame(self.id, FLAG_FIN, b""))
        self._conn.forget_if_done(self)

    async def reset(self, status: int = CANCEL) -> None:
        if self.was_reset:
            return
        self._mark_reset()
        if not self._conn.closed:
            await self._conn.send(RstStreamFrame(self.id, status))
        self._conn.forget_if_done(self)

    async def reply(self, headers: Headers | None = None, fin: bool = False) -> None:
        """Accept a stream the peer opened (SYN_REPLY)."""
        if fin:
            self.local_closed = True
        await self._conn.send(SynReplyFrame(self.id, FLAG_FIN if fin else 0, headers or {}))

    # Connection-side hooks.
    def _feed(self, data: bytes, fin: bool) -> None:
        self._inbound.feed_nowait(data)
        if fin:
            self._remote_fin()

    def _remote_fin(self) -> None:
        self.remote_closed = True
        self._inbound.close_nowait()

    def _mark_reset(self) -> None:
        self.was_reset = True
        self.reset_event.set()
        self.local_closed = True
        self.remote_closed = True
        self._inbound.close_nowait()
        self.replied.set()

    def _adjust_send_window(self, delta: int) -> None:
        self._send_window += delta

    def _consumed(self, n: int) -> None:
        self._unacked += n
        if self._unacked >= DEFAULT_WINDOW // 2 and not self.remote_closed:
            self._conn.send_nowait(WindowUpdateFrame(self.id, self._unacked))
            self._unacked = 0
        self._conn.session_consumed(n)


class SpdyConnection:
    """A SPDY/3.1 session over an asyncio stream pair; call `start()`, then accept or open streams."""

    def __init__(
        self,
        reader: ByteSource,
        writer: ByteSink,
        *,
        server: bool,
        initial_data: bytes = b"",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._server = server
        self._buf = bytearray(initial_data)
        self._out_codec = HeaderCodec()
        self._in_codec = HeaderCodec()
        self._streams: dict[int, SpdyStream] = {}
        self._incoming: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._next_stream_id = 2 if server else 1
        self._next_ping_id = 2 if server else 1
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._last_peer_stream = 0
        self._initial_send_window = DEFAULT_WINDOW
        self.session_send_window = DEFAULT_WINDOW
        self._session_unacked = 0
        self.peer_flow_control = False
        self._window_event = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._goaway_received = False
        self._read_task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def start(self) -> None:
        self._read_task = asyncio.create_task(self._read_loop())

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opened, or None once the connection is gone."""
        if self._closed.is_set() and self._incoming.empty():
            return None
        stream = await self._incoming.get()
        if stream is None:
            self._incoming.put_nowait(None)  # keep answering None to later callers
        return stream

    async def open_stream(self, headers: Headers, *, fin: bool = False, reply_timeout: float = 30.0) -> SpdyStream:
        """Send SYN_STREAM and wait for the peer's SYN_REPLY."""
        if self.closed:
            raise ConnectionError("SPDY connection is closed")
        sid = self._next_stream_id
        self._next_stream_id += 2
        stream = SpdyStream(self, sid, headers, self._initial_send_window)
        stream.local_closed = fin
        self._streams[sid] = stream
        await self.send(SynStreamFrame(sid, 0, 0, FLAG_FIN if fin else 0, headers))
        await asyncio.wait_for(stream.replied.wait(), reply_timeout)
        if stream.was_reset:
            raise ConnectionError(f"peer refused SPDY stream {sid}")
        return stream

    async def ping(self, ping_timeout: float = 10.0) -> float:
        pid = self._next_ping_id
        self._next_ping_id += 2
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[pid] = fut
        started = time.monotonic()
        await self.send(PingFrame(pid))
        try:
            await asyncio.wait_for(fut, ping_timeout)
        finally:
            self._pings.pop(pid, None)
        return time.monotonic() - started

    async def send_settings(self, initial_window: int) -> None:
        await self.send(SettingsFrame(0, ((0, SETTINGS_INITIAL_WINDOW_SIZE, initial_window),)))

    async def close(self) -> None:
        """GOAWAY, then close the transport; streams still open see end of stream."""
        if not self.closed:
            self.send_nowait(GoAwayFrame(self._last_peer_stream, 0))
            with contextlib.suppress(ConnectionError, OSError):
                async with self._drain_lock:
                    await self._writer.drain()
        self._teardown()
        await close_transport(self._writer, self._read_task)

    # Sending.
    def send_nowait(self, frame: Frame) -> None:
        """Encode and queue a frame; header compression order equals wire order because both happen here."""
        if self.closed:
            return
        try:
            self._writer.write(encode_frame(frame, self._out_codec))
        except (ConnectionError, OSError, RuntimeError):
            self._teardown()

    async def send(self, frame: Frame) -> None:
        self.send_nowait(frame)
        if self.closed:
            return
        try:
            async with self._drain_lock:
                await self._writer.drain()
        except (ConnectionError, OSError):
            self._teardown()

    async def window_changed(self) -> None:
        event = self._window_event
        closed = asyncio.ensure_future(self._closed.wait())
        changed = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({closed, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            changed.cancel()

    def session_consumed(self, n: int) -> None:
        self._session_unacked += n
        if self._session_unacked >= DEFAULT_WINDOW // 2:
            self.send_nowait(WindowUpdateFrame(0, self._session_unacked))
            self._session_unacked = 0

    def forget_if_done(self, stream: SpdyStream) -> None:
        if stream.local_closed and stream.remote_closed:
            self._streams.pop(stream.id, None)

    def _wake_writers(self) -> None:
        old, self._window_event = self._window_event, asyncio.Event()
        old.set()

    # Receiving.
    async def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = await self._reader.read(max(65536, n - len(self._buf)))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(self._buf), n)
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def _read_loop(self) -> None:
        try:
            while True:
                head = await self._read_exact(8)
                length = struct.unpack(">I", head[4:])[0] & 0xFFFFFF
                payload = await self._read_exact(length)
                self._handle(decode_frame(head, payload, self._in_codec))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except ProtocolError as exc:
            log.warning("closing SPDY connection: %s", exc)
            self.send_nowait(GoAwayFrame(self._last_peer_stream, PROTOCOL_ERROR))
        finally:
            self._teardown()
            if not self._writer.is_closing():
                self._writer.close()

    def _handle(self, frame: Frame) -> None:
        match frame:
            case DataFrame(sid, flags, data):
                self._on_data(sid, flags, data)
            case SynStreamFrame(sid, _assoc, _pri, flags, headers):
                self._on_syn_stream(sid, flags, headers)
            case SynReplyFrame(sid, flags, headers):
                self._on_syn_reply(sid, flags, headers)
            case HeadersFrame(sid, flags, headers):
                self._on_headers(sid, flags, headers)
            case RstStreamFrame(sid, _status):
                stream = self._streams.pop(sid, None)
                if stream is not None:
                    stream._mark_reset()
                    self._wake_writers()
            case SettingsFrame(_flags, entries):
                self._on_settings(entries)
            case PingFrame(pid):
                self._on_ping(pid)
            case GoAwayFrame():
                self._goaway_received = True
                self._incoming.put_nowait(None)
            case WindowUpdateFrame(sid, delta):
                self._on_window_update(sid, delta)
            case UnknownControlFrame():
                pass  # the spec says unknown control frames are ignored

    def _on_data(self, sid: int, flags: int, data: bytes) -> None:
        stream = self._streams.get(sid)
        if stream is None or stream.remote_closed:
            # Late data for a finished stream; still credit the session window.
            if data:
                self.session_consumed(len(data))
            return
        stream._feed(data, bool(flags & FLAG_FIN))
        if not data and flags & FLAG_FIN:
            self.forget_if_done(stream)

    def _on_syn_reply(self, sid: int, flags: int, headers: Headers) -> None:
        stream = self._streams.get(sid)
        if stream is None:
            return
        stream.reply_headers = headers
        stream.replied.set()
        if flags & FLAG_FIN:
            stream._remote_fin()

    def _on_headers(self, sid: int, flags: int, headers: Headers) -> None:
        stream = self._streams.get(sid)
        if stream is None:
            return
        for k, v in headers.items():
            stream.headers.setdefault(k, []).extend(v)
        if flags & FLAG_FIN:
            stream._remote_fin()

    def _on_settings(self, entries: tuple[tuple[int, int, int], ...]) -> None:
        for _f, sid, value in entries:
            if sid == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._initial_send_window
                self._initial_send_window = value
                for stream in self._streams.values():
                    stream._adjust_send_window(delta)
                self.peer_flow_control = True
                self._wake_writers()

    def _on_ping(self, pid: int) -> None:
        if (pid & 1) == (self._next_ping_id & 1):
            fut = self._pings.get(pid)
            if fut is not None and not fut.done():
                fut.set_result(None)
        else:
            self.send_nowait(PingFrame(pid))

    def _on_window_update(self, sid: int, delta: int) -> None:
        self.peer_flow_control = True
        if sid == 0:
            self.session_send_window += delta
        elif (stream := self._streams.get(sid)) is not None:
            stream._adjust_send_window(delta)
        self._wake_writers()

    def _on_syn_stream(self, sid: int, flags: int, headers: Headers) -> None:
        peer_parity = 1 if self._server else 0
        if sid == 0 or sid % 2 != peer_parity or sid <= self._last_peer_stream or self._goaway_received:
            self.send_nowait(RstStreamFrame(sid, PROTOCOL_ERROR))
            return
        self._last_peer_stream = sid
        stream = SpdyStream(self, sid, headers, self._initial_send_window)
        if flags & FLAG_UNIDIRECTIONAL:
            stream.local_closed = True
        self._streams[sid] = stream
        if flags & FLAG_FIN:
            stream._remote_fin()
        self._incoming.put_nowait(stream)

    def _teardown(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for stream in list(self._streams.values()):
            stream._mark_reset()
        self._streams.clear()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(ConnectionError("SPDY connection closed"))
        self._incoming.put_nowait(None)
        self._wake_writers()
