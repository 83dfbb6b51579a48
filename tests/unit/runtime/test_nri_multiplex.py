"""NRI's mux: logical connections over one socket, frames sized for a Go peer, clean failure."""

from __future__ import annotations

import asyncio
import socket

import pytest
from crishim.runtime.nri.multiplex import (
    FRAME_HEADER,
    MAX_SENT_PAYLOAD,
    PLUGIN_SERVICE_CONN,
    RUNTIME_SERVICE_CONN,
    Mux,
    MuxClosed,
)


async def socket_pair() -> tuple[
    tuple[asyncio.StreamReader, asyncio.StreamWriter], tuple[asyncio.StreamReader, asyncio.StreamWriter]
]:
    left, right = socket.socketpair()
    return await asyncio.open_connection(sock=left), await asyncio.open_connection(sock=right)


async def test_two_logical_connections_stay_apart() -> None:
    (lr, lw), (rr, rw) = await socket_pair()
    a, b = Mux(lr, lw), Mux(rr, rw)
    runs = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    a_plugin, a_runtime = a.open(PLUGIN_SERVICE_CONN), a.open(RUNTIME_SERVICE_CONN)
    b_plugin, b_runtime = b.open(PLUGIN_SERVICE_CONN), b.open(RUNTIME_SERVICE_CONN)
    await a_plugin.write(b"to plugin service")
    await a_runtime.write(b"to runtime service")
    await b_plugin.write(b"answer")
    assert await b_runtime.read_exactly(18) == b"to runtime service"
    assert await b_plugin.read_exactly(17) == b"to plugin service"
    assert await a_plugin.read_exactly(6) == b"answer"
    await a.close()
    with pytest.raises(MuxClosed):
        await b_plugin.read_exactly(1)
    await asyncio.gather(*runs)
    assert b.closed


async def test_large_writes_are_split_into_frames_a_go_reader_accepts() -> None:
    (lr, lw), (rr, rw) = await socket_pair()
    mux = Mux(lr, lw)
    data = bytes(range(256)) * 50  # 12800 bytes
    await mux.open(PLUGIN_SERVICE_CONN).write(data)
    received = bytearray()
    sizes = []
    while len(received) < len(data):
        conn_id, size = FRAME_HEADER.unpack(await rr.readexactly(FRAME_HEADER.size))
        assert conn_id == PLUGIN_SERVICE_CONN
        sizes.append(size)
        received += await rr.readexactly(size)
    assert bytes(received) == data
    assert max(sizes) == MAX_SENT_PAYLOAD
    await mux.close()
    rw.close()


async def test_frames_for_unopened_connections_are_dropped() -> None:
    (lr, lw), (rr, rw) = await socket_pair()
    mux = Mux(rr, rw)
    run = asyncio.create_task(mux.run())
    conn = mux.open(RUNTIME_SERVICE_CONN)
    lw.write(FRAME_HEADER.pack(7, 3) + b"xyz" + FRAME_HEADER.pack(RUNTIME_SERVICE_CONN, 2) + b"ok")
    await lw.drain()
    assert await conn.read_exactly(2) == b"ok"
    lw.close()
    await run
    with pytest.raises(MuxClosed):
        await conn.read_exactly(1)


async def test_an_oversized_frame_closes_the_mux() -> None:
    (lr, lw), (rr, rw) = await socket_pair()
    mux = Mux(rr, rw)
    run = asyncio.create_task(mux.run())
    conn = mux.open(PLUGIN_SERVICE_CONN)
    lw.write(FRAME_HEADER.pack(PLUGIN_SERVICE_CONN, 0xFFFFFFF0))
    await lw.drain()
    await run
    assert mux.closed
    assert "frame" in str(mux.error)
    with pytest.raises(MuxClosed):
        await conn.write(b"late")
    lw.close()


async def test_connection_zero_is_reserved() -> None:
    (lr, lw), (rr, rw) = await socket_pair()
    mux = Mux(lr, lw)
    with pytest.raises(ValueError, match="reserved"):
        mux.open(0)
    await mux.close()
    rw.close()
