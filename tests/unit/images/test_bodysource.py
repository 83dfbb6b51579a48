"""BodySource: a layer body read in the unpack thread from a real HTTP connection on 127.0.0.1,
through httpx's own transport (chunks iterated) and through ReadintoTransport (read into the
source's buffer), the one the registry client uses for layer bodies."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from crishim.images.blobtransport import ReadintoTransport
from crishim.images.errors import UnpackAborted
from crishim.images.layerstream import BodySource, StreamBroken

BODY_SIZE = 3 << 20


@dataclass
class _Server:
    url: str
    release: threading.Event  # lets a stalled or breaking server end its connection


def _serve(listener: socket.socket, sent: int, after: str, release: threading.Event) -> None:
    """Answers one GET with a Content-Length of BODY_SIZE, sends `sent` bytes, then ends the
    body ("finish"), stalls until released ("stall") or closes the connection ("break")."""
    with listener:
        conn, _ = listener.accept()
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BODY_SIZE)
        conn.sendall(bytes(range(256)) * (sent // 256))
        if after == "stall":
            release.wait(30)
        elif after == "break":
            conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture(params=["httpx", "readinto"])
def client(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """A blocking client over either transport; its read timeout alone would take a minute."""
    timeout = httpx.Timeout(60)
    transport = ReadintoTransport(True, timeout) if request.param == "readinto" else None
    with httpx.Client(timeout=timeout, transport=transport) as client:
        yield client


@pytest.fixture
def serve() -> Iterator[object]:
    threads: list[threading.Thread] = []
    releases: list[threading.Event] = []

    def start(sent: int, after: str) -> _Server:
        listener = socket.create_server(("127.0.0.1", 0))
        release = threading.Event()
        thread = threading.Thread(target=_serve, args=(listener, sent, after, release), daemon=True)
        thread.start()
        threads.append(thread)
        releases.append(release)
        return _Server(f"http://127.0.0.1:{listener.getsockname()[1]}/blob", release)

    yield start
    for release in releases:
        release.set()
    for thread in threads:
        thread.join(10)


async def _open(client: httpx.Client, url: str) -> httpx.Response:
    return await asyncio.to_thread(client.send, client.build_request("GET", url), stream=True)


def _drain(source: BodySource) -> int:
    total = 0
    while (chunk := source()) is not None:
        total += len(chunk)
    return total


async def test_the_whole_body_arrives_and_progress_reaches_the_loop_in_steps(serve, client: httpx.Client) -> None:
    server = serve(BODY_SIZE, "finish")
    reported: list[int] = []
    response = await _open(client, server.url)
    source = BodySource(response, reported.append, step=1 << 20)
    assert await asyncio.to_thread(_drain, source) == BODY_SIZE
    response.close()
    await asyncio.sleep(0)  # the last report is queued on the loop
    assert sum(reported) == BODY_SIZE == source.received
    assert len(reported) <= 4, "progress went to the loop per chunk, not per step"


async def test_interrupt_ends_a_read_waiting_on_a_stalled_connection(serve, client: httpx.Client) -> None:
    server = serve(1 << 20, "stall")
    response = await _open(client, server.url)
    first_mib = asyncio.Event()
    source = BodySource(response, lambda n: first_mib.set(), step=1 << 20)
    reader = asyncio.ensure_future(asyncio.to_thread(_drain, source))
    await asyncio.wait_for(first_mib.wait(), 20)
    await asyncio.sleep(0.1)  # the thread is back in its read of the stalled socket
    assert not reader.done()
    source.interrupt()
    with pytest.raises(UnpackAborted):
        await asyncio.wait_for(reader, 20)
    response.close()
    server.release.set()


async def test_a_connection_closed_mid_body_is_a_broken_stream(serve, client: httpx.Client) -> None:
    server = serve(1 << 20, "break")
    response = await _open(client, server.url)
    source = BodySource(response, lambda n: None)
    with pytest.raises(StreamBroken):
        await asyncio.to_thread(_drain, source)
    response.close()
    assert source.received == 1 << 20


async def test_reads_are_gathered_into_whole_chunks_in_order(serve, client: httpx.Client) -> None:
    """Chunks of exactly `batch` bytes (the last may be shorter), the body's bytes in order,
    though the client's reads do not divide into them (a read is split across two chunks)."""
    server = serve(BODY_SIZE, "finish")
    batch = 100_000

    def drain(source: BodySource) -> list[bytes]:
        chunks: list[bytes] = []
        while (chunk := source()) is not None:
            chunks.append(bytes(chunk))  # a view of the source's buffer: copied before the next call
        return chunks

    response = await _open(client, server.url)
    chunks = await asyncio.to_thread(drain, BodySource(response, lambda n: None, batch=batch))
    response.close()
    assert [len(c) for c in chunks[:-1]] == [batch] * (len(chunks) - 1)
    assert 0 < len(chunks[-1]) <= batch
    assert b"".join(chunks) == bytes(range(256)) * (BODY_SIZE // 256)
