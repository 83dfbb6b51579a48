"""Port-forward as crictl --transport websocket speaks it: SPDY inside binary WebSocket messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from crishim.runtime.streaming.server import StreamingServer
from crishim.runtime.streaming.spdy import SpdyConnection
from crishim.runtime.streaming.tunnel import WebSocketTunnel
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request

from tests.support.net import tcp_server
from tests.support.streamclient import HTTPStatusError, spdy_port_forward

TUNNEL = "SPDY/3.1+portforward.k8s.io"


async def tunnel_connect(url: str, protocols: list[str]) -> tuple[SpdyConnection, str]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    ws = WSConnection(ConnectionType.CLIENT)
    writer.write(ws.send(Request(host=parts.netloc, target=parts.path, subprotocols=protocols)))
    await writer.drain()
    while True:
        data = await reader.read(65536)
        if not data:
            writer.close()
            raise HTTPStatusError(0, b"closed during the handshake")
        ws.receive_data(data)
        answers = [e for e in ws.events() if isinstance(e, AcceptConnection | RejectConnection)]
        if answers:
            break
    if isinstance(answers[0], RejectConnection):
        writer.close()
        raise HTTPStatusError(answers[0].status_code, b"")
    tunnel = WebSocketTunnel(ws, reader, writer)
    conn = SpdyConnection(tunnel, tunnel, server=False)
    conn.start()
    return conn, answers[0].subprotocol or ""


@pytest.fixture
async def upper_port() -> AsyncIterator[int]:
    """A TCP server that upper-cases everything until EOF, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async with tcp_server(handle) as port:
        yield port


async def test_tunnelled_spdy_carries_large_concurrent_connections(server: StreamingServer, upper_port: int) -> None:
    conn, chosen = await tunnel_connect(server.url_for_port_forward("pod1"), [TUNNEL])
    try:
        assert chosen == TUNNEL
        payloads = [bytes([97 + i]) * (300_000 + i) for i in range(3)]
        results = await asyncio.wait_for(
            asyncio.gather(*(spdy_port_forward(conn, upper_port, i, p) for i, p in enumerate(payloads))), 20
        )
    finally:
        await conn.close()
    for payload, (data, error) in zip(payloads, results, strict=True):
        assert error == b""
        assert data == payload.upper()


async def test_tunnel_is_offered_only_for_port_forward(server: StreamingServer) -> None:
    with pytest.raises(HTTPStatusError) as info:
        await tunnel_connect(server.url_for_exec("c1", ["true"]), [TUNNEL])
    assert info.value.status == 400
