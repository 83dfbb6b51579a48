"""A small asyncio ttrpc: unary calls over one byte stream, as containerd's ttrpc frames them.

Each message is a 10-byte header (big-endian uint32 payload length, uint32
stream ID, uint8 type, uint8 flags) and its payload. A call is one Request
message (type 1) on a new odd stream ID, answered by one Response (type 2) on
the same ID; the payloads are the `ttrpc.Request`/`ttrpc.Response` envelopes of
ttrpc.proto around the method's own protobuf messages. Streaming calls (type 3
data messages) are not used by NRI and are refused.

The byte stream is anything with `read_exactly(n)`, `write(data)` and `close()`:
one logical connection of an NRI mux (multiplex.py), or a plain socket
(`SocketStream`). A connection carries either a client or a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from crishim.runtime.nri import ttrpc_pb2
from google.protobuf.message import DecodeError, Message

log = logging.getLogger("crishim.nri")

HEADER = struct.Struct(">IIBB")
TYPE_REQUEST = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3
MAX_MESSAGE = 4 << 20

# The gRPC status codes ttrpc carries.
OK = 0
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14

ResponseT = TypeVar("ResponseT", bound=Message)
Handler = Callable[[bytes], Awaitable[Message]]


class ByteStream(Protocol):
    async def read_exactly(self, count: int) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class TtrpcError(Exception):
    """A call answered with a non-OK status (or one that never got an answer)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProtocolError(ConnectionError):
    """The peer sent something that is not ttrpc; the connection cannot be trusted further."""


class SocketStream:
    """A ByteStream over an asyncio stream pair (a plain socket, for tests and tools)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def read_exactly(self, count: int) -> bytes:
        try:
            return await self._reader.readexactly(count)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("peer closed the connection") from exc

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


@dataclass(frozen=True, slots=True)
class Frame:
    stream_id: int
    kind: int
    flags: int
    payload: bytes


async def read_frame(stream: ByteStream) -> Frame:
    size, stream_id, kind, flags = HEADER.unpack(await stream.read_exactly(HEADER.size))
    if size > MAX_MESSAGE:
        raise ProtocolError(f"peer sent a {size}-byte message, more than ttrpc's {MAX_MESSAGE}")
    return Frame(stream_id, kind, flags, await stream.read_exactly(size) if size else b"")


async def write_frame(stream: ByteStream, frame: Frame) -> None:
    if len(frame.payload) > MAX_MESSAGE:
        raise TtrpcError(INVALID_ARGUMENT, f"a {len(frame.payload)}-byte message exceeds ttrpc's {MAX_MESSAGE}")
    header = HEADER.pack(len(frame.payload), frame.stream_id, frame.kind, frame.flags)
    await stream.write(header + frame.payload)


def parse(message_type: type[ResponseT], payload: bytes) -> ResponseT:
    """A protobuf message from bytes; a garbled one is the peer's INVALID_ARGUMENT."""
    message: ResponseT = message_type()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise TtrpcError(INVALID_ARGUMENT, f"undecodable {message_type.__name__}: {exc}") from exc
    return message


class Client:
    """Calls methods on the peer's server; run() must be running to receive the answers."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._ids = itertools.count(1, 2)
        self._pending: dict[int, asyncio.Future[ttrpc_pb2.Response]] = {}
        self._closed: BaseException | None = None

    async def run(self) -> None:
        """Receives responses until the connection ends; then every pending call fails."""
        try:
            while True:
                frame = await read_frame(self._stream)
                if frame.kind != TYPE_RESPONSE:
                    raise ProtocolError(f"the server sent a message of type {frame.kind} to a unary client")
                waiter = self._pending.pop(frame.stream_id, None)
                response = ttrpc_pb2.Response()
                try:
                    response.ParseFromString(frame.payload)
                except DecodeError as exc:
                    raise ProtocolError(f"undecodable ttrpc response: {exc}") from exc
                if waiter is not None and not waiter.done():
                    waiter.set_result(response)
        except (ConnectionError, OSError) as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(ConnectionError("client closed"))
            raise

    async def call(
        self, service: str, method: str, request: Message, response_type: type[ResponseT], within: float
    ) -> ResponseT:
        """One unary call; TtrpcError on a non-OK status, DEADLINE_EXCEEDED after `within` seconds."""
        if self._closed is not None:
            raise TtrpcError(UNAVAILABLE, f"connection closed: {self._closed}")
        stream_id = next(self._ids)
        envelope = ttrpc_pb2.Request(
            service=service, method=method, payload=request.SerializeToString(), timeout_nano=int(within * 1e9)
        )
        waiter: asyncio.Future[ttrpc_pb2.Response] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = waiter
        try:
            # The write counts too: a peer that stops reading must not hold the caller forever.
            async with asyncio.timeout(within):
                await write_frame(self._stream, Frame(stream_id, TYPE_REQUEST, 0, envelope.SerializeToString()))
                response = await waiter
        except TimeoutError:
            raise TtrpcError(DEADLINE_EXCEEDED, f"{method} got no answer within {within:g}s") from None
        except (ConnectionError, OSError) as exc:
            raise TtrpcError(UNAVAILABLE, f"{method}: connection closed: {exc}") from exc
        finally:
            self._pending.pop(stream_id, None)
        if response.status.code != OK:
            raise TtrpcError(response.status.code, response.status.message)
        return parse(response_type, response.payload)

    def _fail(self, error: BaseException) -> None:
        self._closed = error
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError(str(error) or "connection closed"))
        self._pending.clear()


class Server:
    """Serves registered methods to the peer's client; each call runs in its own task."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_id = 0

    def register(self, service: str, method: str, handler: Handler) -> None:
        self._handlers[(service, method)] = handler

    async def run(self) -> None:
        """Reads requests until the connection ends (ConnectionError) or breaks the protocol."""
        try:
            while True:
                frame = await read_frame(self._stream)
                if frame.kind != TYPE_REQUEST:
                    raise ProtocolError(f"the client sent a message of type {frame.kind}; only unary calls are served")
                if frame.stream_id % 2 != 1 or frame.stream_id <= self._last_id:
                    raise ProtocolError(f"stream ID {frame.stream_id} is not a new odd ID")
                self._last_id = frame.stream_id
                task = asyncio.get_running_loop().create_task(self._serve(frame))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _serve(self, frame: Frame) -> None:
        status, payload = ttrpc_pb2.Status(code=OK), b""
        try:
            request = parse(ttrpc_pb2.Request, frame.payload)
            handler = self._handlers.get((request.service, request.method))
            if handler is None:
                raise TtrpcError(UNIMPLEMENTED, f"{request.service}/{request.method} is not served")
            timeout = request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
            async with asyncio.timeout(timeout):
                payload = (await handler(request.payload)).SerializeToString()
        except TtrpcError as exc:
            status = ttrpc_pb2.Status(code=exc.code, message=exc.message)
        except TimeoutError:
            status = ttrpc_pb2.Status(code=DEADLINE_EXCEEDED, message="the call's deadline passed")
        except Exception as exc:  # noqa: BLE001 - any failure becomes the caller's status
            log.exception("ttrpc handler failed")
            status = ttrpc_pb2.Status(code=UNKNOWN, message=str(exc) or type(exc).__name__)
        response = ttrpc_pb2.Response(status=status, payload=payload)
        with contextlib.suppress(ConnectionError, OSError):
            await write_frame(self._stream, Frame(frame.stream_id, TYPE_RESPONSE, 0, response.SerializeToString()))
