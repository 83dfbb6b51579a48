"""A byte stream tunnelled through binary WebSocket messages (client-go's "SPDY/3.1+" protocols).

`crictl port-forward --transport websocket` and kubectl's port-forward over WebSocket
(KEP-4006) keep speaking SPDY/3.1 `portforward.k8s.io`, but inside a WebSocket whose
subprotocol is `SPDY/3.1+portforward.k8s.io`: each binary message carries the next
bytes of the SPDY stream, with no channel byte and no meaning to message boundaries.
`WebSocketTunnel` looks like the reader/writer pair SpdyConnection expects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from crishim.runtime.streaming.errors import ProtocolError
from wsproto import WSConnection
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

SPDY_TUNNEL_PREFIX = "SPDY/3.1+"
READ_SIZE = 65536


class WebSocketTunnel:
    """Both ends of a tunnelled byte stream over one accepted (or established) WebSocket.

    Only one task may read at a time (SpdyConnection's read loop does); writes are
    synchronous appends to the transport, so frames never interleave.
    """

    def __init__(self, ws: WSConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._ws = ws
        self._reader = reader
        self._writer = writer
        self._chunks: deque[bytes] = deque()
        self._eof = False
        self._close_sent = False

    # Reading side (asyncio.StreamReader-like).
    async def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes of the tunnelled stream (any amount when n < 0); b"" at its end."""
        while not self._chunks:
            if self._eof:
                return b""
            self._take_events()
            if self._chunks or self._eof:
                continue
            data = await self._reader.read(READ_SIZE)
            if not data:
                self._eof = True
                break
            try:
                self._ws.receive_data(data)
            except RemoteProtocolError as exc:
                self._eof = True
                raise ProtocolError(f"malformed WebSocket frame in the SPDY tunnel: {exc}") from exc
        if not self._chunks:
            return b""
        chunk = self._chunks.popleft()
        if 0 <= n < len(chunk):
            self._chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        return chunk

    def _take_events(self) -> None:
        try:
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    if event.data:
                        self._chunks.append(bytes(event.data))
                elif isinstance(event, Ping):
                    self._send_raw(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(LocalProtocolError):
                        self._send_raw(self._ws.send(event.response()))
                    self._close_sent = True
                    self._eof = True
                    return
                elif isinstance(event, TextMessage):
                    # The tunnel carries bytes only; a text message means a confused peer.
                    self._eof = True
                    return
        except RemoteProtocolError as exc:
            self._eof = True
            raise ProtocolError(f"malformed WebSocket frame in the SPDY tunnel: {exc}") from exc

    # Writing side (asyncio.StreamWriter-like).
    def write(self, data: bytes) -> None:
        if not data:
            return
        try:
            frame = self._ws.send(BytesMessage(data=bytes(data)))
        except LocalProtocolError as exc:
            raise ConnectionError(f"the WebSocket tunnel is closing: {exc}") from exc
        self._send_raw(frame)

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        if not self._close_sent:
            self._close_sent = True
            with contextlib.suppress(LocalProtocolError, ConnectionError, OSError, RuntimeError):
                self._send_raw(self._ws.send(CloseConnection(code=1000)))
        self._writer.close()

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()

    def _send_raw(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)
