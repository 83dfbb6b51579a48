"""SPDY/3.1 frame layout, header compression and flow control, checked against the spec's byte layout."""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest
from crishim.runtime.streaming.errors import ProtocolError
from crishim.runtime.streaming.spdy import SpdyConnection
from crishim.runtime.streaming.spdy_dictionary import HEADER_DICTIONARY
from crishim.runtime.streaming.spdy_frames import (
    DataFrame,
    GoAwayFrame,
    HeaderCodec,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
    decode_frame,
    encode_frame,
    parse_header_block,
)


def test_dictionary_is_the_spdy3_dictionary() -> None:
    assert len(HEADER_DICTIONARY) == 1423
    assert HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert HEADER_DICTIONARY.endswith(b"charset=utf-8charset=iso-8859-1,utf-,*,enq=0.")


def test_data_frame_layout() -> None:
    raw = encode_frame(DataFrame(5, 1, b"abc"), HeaderCodec())
    assert raw == struct.pack(">II", 5, (1 << 24) | 3) + b"abc"


def test_control_frames_layout() -> None:
    codec = HeaderCodec()
    assert encode_frame(RstStreamFrame(3, 5), codec) == bytes.fromhex("80030003000000080000000300000005")
    assert encode_frame(PingFrame(7), codec) == bytes.fromhex("800300060000000400000007")
    window_update = encode_frame(WindowUpdateFrame(0, 1000), codec)
    assert window_update == bytes.fromhex("800300090000000800000000") + struct.pack(">I", 1000)
    assert encode_frame(GoAwayFrame(9, 0), codec) == bytes.fromhex("8003000700000008") + struct.pack(">II", 9, 0)
    settings = encode_frame(SettingsFrame(0, ((0, 7, 65536),)), codec)
    assert settings == bytes.fromhex("800300040000000c00000001") + struct.pack(">II", 7, 65536)


def test_header_block_is_zlib_with_the_dictionary() -> None:
    codec = HeaderCodec()
    raw = encode_frame(SynStreamFrame(1, 0, 0, 0, {"streamtype": ["error"]}), codec)
    assert raw[:4] == bytes.fromhex("80030001")
    assert raw[8:18] == struct.pack(">IIBB", 1, 0, 0, 0)
    plain = zlib.decompressobj(zdict=HEADER_DICTIONARY).decompress(raw[18:])
    assert plain == struct.pack(">I", 1) + struct.pack(">I", 10) + b"streamtype" + struct.pack(">I", 5) + b"error"


def test_headers_round_trip_through_one_shared_zlib_stream() -> None:
    out, inp = HeaderCodec(), HeaderCodec()
    for i in range(3):
        frame = SynReplyFrame(i * 2 + 1, 0, {"port": [str(8000 + i)], "multi": ["a", "b"]})
        raw = encode_frame(frame, out)
        assert decode_frame(raw[:8], raw[8:], inp) == frame


def test_bad_header_blocks_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError):
        parse_header_block(struct.pack(">I", 1) + struct.pack(">I", 50) + b"short")
    with pytest.raises(ProtocolError):
        HeaderCodec().decode(b"not zlib at all")
    with pytest.raises(ProtocolError):
        decode_frame(bytes.fromhex("8002000600000004"), b"\0\0\0\1", HeaderCodec())


async def _pair() -> tuple[SpdyConnection, SpdyConnection, asyncio.Server]:
    accepted: asyncio.Future[SpdyConnection] = asyncio.get_running_loop().create_future()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conn = SpdyConnection(r, w, server=True)
        conn.start()
        accepted.set_result(conn)
        await conn.wait_closed()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
    client = SpdyConnection(r, w, server=False)
    client.start()
    return client, await accepted, srv


async def test_flow_controlled_sender_waits_for_window_updates() -> None:
    client, server, srv = await _pair()
    try:
        await client.send_settings(65536)  # announce flow control so the server honours windows
        stream_task = asyncio.create_task(client.open_stream({"streamtype": ["stdout"]}))
        incoming = await server.accept()
        assert incoming is not None
        await incoming.reply()
        outbound = await stream_task
        for _ in range(1000):  # the settings frame reaches the server on its own time
            if server.peer_flow_control:
                break
            await asyncio.sleep(0.01)
        assert server.peer_flow_control
        payload = b"x" * (300 * 1024)
        writer = asyncio.create_task(incoming.write(payload))
        # Nobody reads for a while: the server stops at the 64 KiB stream window. The wait is the check.
        await asyncio.sleep(0.1)
        assert not writer.done()
        received = bytearray()
        while len(received) < len(payload):
            received += await outbound.read()
        await writer
        assert bytes(received) == payload
        assert await client.ping() >= 0
    finally:
        await client.close()
        await server.close()
        srv.close()
        await srv.wait_closed()


async def test_reset_stream_reads_eof_and_drops_writes() -> None:
    client, server, srv = await _pair()
    try:
        stream_task = asyncio.create_task(client.open_stream({"streamtype": ["data"]}))
        incoming = await server.accept()
        assert incoming is not None
        await incoming.reply()
        outbound = await stream_task
        await outbound.reset()
        await asyncio.wait_for(incoming.reset_event.wait(), 5)
        assert await incoming.read() == b""
        await incoming.write(b"ignored")
    finally:
        await client.close()
        await server.close()
        srv.close()
        await srv.wait_closed()
