"""Port-forward over SPDY and WebSocket to a real TCP server in the host network namespace."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from crishim.runtime.streaming.server import StreamingServer

from tests.support.net import tcp_server
from tests.support.streamclient import port_prefix, spdy_connect, spdy_port_forward, ws_port_forward


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A TCP server that answers 'echo:<line>' for the first line (or all input up to EOF), then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            data = exc.partial
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async with tcp_server(handle) as port:
        yield port


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_spdy_port_forward_carries_several_connections_at_once(server: StreamingServer, echo_port: int) -> None:
    conn, proto = await spdy_connect(server.url_for_port_forward("pod1"), ["portforward.k8s.io"])
    try:
        assert proto == "portforward.k8s.io"
        results = await asyncio.wait_for(
            asyncio.gather(
                *(spdy_port_forward(conn, echo_port, i, f"req{i}".encode() * 1000 + b"\n") for i in range(5))
            ),
            10,
        )
    finally:
        await conn.close()
    for i, (data, err) in enumerate(results):
        assert data == b"echo:" + f"req{i}".encode() * 1000 + b"\n"
        assert err == b""


async def test_spdy_port_forward_reports_refused_port_on_error_stream(server: StreamingServer) -> None:
    port = closed_port()
    conn, _ = await spdy_connect(server.url_for_port_forward("pod1"), ["portforward.k8s.io"])
    try:
        data, err = await asyncio.wait_for(spdy_port_forward(conn, port, 1, b"x"), 10)
    finally:
        await conn.close()
    assert data == b""
    assert f"error forwarding port {port} to pod pod1".encode() in err


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v4.base64.channel.k8s.io", "portforward.k8s.io"])
async def test_websocket_port_forward_prefixes_port_and_relays_data(
    server: StreamingServer, echo_port: int, protocol: str
) -> None:
    url = server.url_for_port_forward("pod1") + f"?ports={echo_port}"
    capture = await ws_port_forward(url, b"hello\n", protocol=protocol)
    assert capture.first_frames[0] == port_prefix(echo_port)
    assert capture.first_frames[1] == port_prefix(echo_port)
    assert capture.get(0) == port_prefix(echo_port) + b"echo:hello\n"
    assert capture.get(1) == port_prefix(echo_port)


async def test_websocket_port_forward_uses_ports_from_the_cri_request(server: StreamingServer) -> None:
    port = closed_port()
    capture = await ws_port_forward(server.url_for_port_forward("pod9", [port]), b"")
    assert capture.get(0) == port_prefix(port)
    assert b"error forwarding port" in capture.get(1)
