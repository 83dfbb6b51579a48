"""The ttrpc module: framing, unary calls, statuses, deadlines, and peers that misbehave."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from crishim.runtime.nri import nri_pb2, ttrpc_pb2
from crishim.runtime.nri.ttrpc import (
    DEADLINE_EXCEEDED,
    HEADER,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    UNIMPLEMENTED,
    UNKNOWN,
    Client,
    Frame,
    ProtocolError,
    Server,
    SocketStream,
    TtrpcError,
    parse,
    read_frame,
    write_frame,
)
from google.protobuf.message import Message

SERVICE = "nri.pkg.api.v1alpha1.Runtime"


OPEN: list[SocketStream] = []


async def stream_pair() -> tuple[SocketStream, SocketStream]:
    left, right = socket.socketpair()
    (lr, lw), (rr, rw) = await asyncio.open_connection(sock=left), await asyncio.open_connection(sock=right)
    pair = SocketStream(lr, lw), SocketStream(rr, rw)
    OPEN.extend(pair)
    return pair


@pytest.fixture(autouse=True)
async def close_streams():
    """Both ends of every pair are closed, so no writer is left for the garbage collector."""
    yield
    while OPEN:
        await OPEN.pop().close()


async def register(payload: bytes) -> Message:
    request = parse(nri_pb2.RegisterPluginRequest, payload)
    if request.plugin_idx == "xx":
        raise TtrpcError(3, "bad index")
    if request.plugin_idx == "99":
        raise RuntimeError("handler broke")
    if request.plugin_idx == "50":
        await asyncio.sleep(10)
    return nri_pb2.Empty()


async def served() -> tuple[Client, list[asyncio.Task[None]], SocketStream]:
    client_side, server_side = await stream_pair()
    server = Server(server_side)
    server.register(SERVICE, "RegisterPlugin", register)
    client = Client(client_side)
    return client, [asyncio.create_task(server.run()), asyncio.create_task(client.run())], client_side


def test_header_is_ten_bytes_big_endian() -> None:
    assert HEADER.size == 10
    assert HEADER.pack(5, 1, TYPE_REQUEST, 0) == b"\x00\x00\x00\x05\x00\x00\x00\x01\x01\x00"


async def test_unary_call_round_trip_and_statuses() -> None:
    client, tasks, stream = await served()
    ok = nri_pb2.RegisterPluginRequest(plugin_name="p", plugin_idx="10")
    assert await client.call(SERVICE, "RegisterPlugin", ok, nri_pb2.Empty, 2) == nri_pb2.Empty()
    with pytest.raises(TtrpcError) as refused:
        await client.call(SERVICE, "RegisterPlugin", nri_pb2.RegisterPluginRequest(plugin_idx="xx"), nri_pb2.Empty, 2)
    assert (refused.value.code, refused.value.message) == (3, "bad index")
    with pytest.raises(TtrpcError) as broke:
        await client.call(SERVICE, "RegisterPlugin", nri_pb2.RegisterPluginRequest(plugin_idx="99"), nri_pb2.Empty, 2)
    assert broke.value.code == UNKNOWN
    assert "handler broke" in broke.value.message
    with pytest.raises(TtrpcError) as missing:
        await client.call(SERVICE, "UpdateContainers", ok, nri_pb2.Empty, 2)
    assert missing.value.code == UNIMPLEMENTED
    await stream.close()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_concurrent_calls_get_their_own_answers() -> None:
    client, tasks, stream = await served()
    slow = client.call(SERVICE, "RegisterPlugin", nri_pb2.RegisterPluginRequest(plugin_idx="50"), nri_pb2.Empty, 0.5)
    fast = client.call(SERVICE, "RegisterPlugin", nri_pb2.RegisterPluginRequest(plugin_idx="01"), nri_pb2.Empty, 2)
    results = await asyncio.gather(slow, fast, return_exceptions=True)
    assert isinstance(results[0], TtrpcError)
    assert results[0].code == DEADLINE_EXCEEDED
    assert results[1] == nri_pb2.Empty()
    await stream.close()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_the_server_enforces_the_callers_deadline() -> None:
    client_side, server_side = await stream_pair()
    server = Server(server_side)
    server.register(SERVICE, "RegisterPlugin", register)
    serving = asyncio.create_task(server.run())
    request = ttrpc_pb2.Request(
        service=SERVICE,
        method="RegisterPlugin",
        payload=nri_pb2.RegisterPluginRequest(plugin_idx="50").SerializeToString(),
        timeout_nano=50_000_000,
    )
    await write_frame(client_side, Frame(1, TYPE_REQUEST, 0, request.SerializeToString()))
    frame = await read_frame(client_side)
    assert (frame.stream_id, frame.kind) == (1, TYPE_RESPONSE)
    assert parse(ttrpc_pb2.Response, frame.payload).status.code == DEADLINE_EXCEEDED
    await client_side.close()
    with pytest.raises(ConnectionError):
        await serving


async def test_pending_calls_fail_when_the_peer_goes_away() -> None:
    client_side, server_side = await stream_pair()
    client = Client(client_side)
    receiving = asyncio.create_task(client.run())
    call = asyncio.create_task(client.call(SERVICE, "RegisterPlugin", nri_pb2.Empty(), nri_pb2.Empty, 5))
    await read_frame(server_side)  # the request arrived; hang up without answering
    await server_side.close()
    with pytest.raises(TtrpcError, match="closed"):
        await call
    await receiving
    with pytest.raises(TtrpcError, match="closed"):
        await client.call(SERVICE, "RegisterPlugin", nri_pb2.Empty(), nri_pb2.Empty, 5)


async def test_garbage_from_a_client_ends_the_server() -> None:
    client_side, server_side = await stream_pair()
    server = Server(server_side)
    serving = asyncio.create_task(server.run())
    await client_side.write(HEADER.pack(0, 2, 9, 0))  # an unknown message type
    with pytest.raises(ProtocolError):
        await serving
    await client_side.close()


async def test_even_or_reused_stream_ids_are_refused() -> None:
    client_side, server_side = await stream_pair()
    server = Server(server_side)
    serving = asyncio.create_task(server.run())
    await write_frame(client_side, Frame(2, TYPE_REQUEST, 0, b""))
    with pytest.raises(ProtocolError, match="odd"):
        await serving
    await client_side.close()


async def test_an_oversized_header_is_a_protocol_error() -> None:
    left, right = await stream_pair()
    await left.write(HEADER.pack(64 << 20, 1, TYPE_REQUEST, 0))
    with pytest.raises(ProtocolError, match="more than"):
        await read_frame(right)
    await left.close()


async def test_a_peer_that_stops_reading_cannot_hold_a_call() -> None:
    client_side, server_side = await stream_pair()
    client = Client(client_side)
    receiving = asyncio.create_task(client.run())
    big = nri_pb2.RegisterPluginRequest(plugin_name="x" * (2 << 20))  # more than the socket buffers hold
    started = time.monotonic()
    with pytest.raises(TtrpcError) as late:
        await client.call(SERVICE, "RegisterPlugin", big, nri_pb2.Empty, 0.2)
    assert late.value.code == DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    receiving.cancel()
