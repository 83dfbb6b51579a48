"""Port forwarding sessions: `portforward.k8s.io` over SPDY and the channel protocol over WebSocket.

SPDY: one connection carries any number of forwarded TCP connections; each is a
pair of client-opened streams (streamType data and error) sharing a `requestID`
header and naming the `port`. WebSocket: the ports come from the `ports` query
parameter (or the CRI request); port i uses channel 2i for data and 2i+1 for
errors, and the first frame we send on each carries the port, little-endian.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any

from crishim.runtime.streaming.errors import InvalidArgument, StreamingError
from crishim.runtime.streaming.spdy import SpdyConnection, SpdyStream
from crishim.runtime.streaming.streams import ByteReader, ByteWriter, StreamBackend
from crishim.runtime.streaming.tokens import PortForwardRequest
from crishim.runtime.streaming.websocket import ChannelConnection

log = logging.getLogger(__name__)

SPDY_PORTFORWARD = "portforward.k8s.io"
# client-go tunnels SPDY through WebSocket under this subprotocol (KEP-4006).
SPDY_TUNNEL_PORTFORWARD = "SPDY/3.1+portforward.k8s.io"
WEBSOCKET_PROTOCOLS = (
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "portforward.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
)
PAIR_TIMEOUT = 30.0


def parse_port(value: str | None) -> int:
    if value is None or not value.strip().isdigit():
        raise InvalidArgument(f"port {value!r} is not a number; name a TCP port 1-65535")
    port = int(value)
    if not 0 < port < 65536:
        raise InvalidArgument(f"port {port} is out of range; name a TCP port 1-65535")
    return port


def parse_ports(query_values: list[str]) -> tuple[int, ...]:
    ports: list[int] = []
    for value in query_values:
        ports += [parse_port(p) for p in value.split(",") if p.strip()]
    return tuple(ports)


async def forward_one(
    backend: StreamBackend,
    request: PortForwardRequest,
    port: int,
    data_in: ByteReader,
    data_out: ByteWriter,
    error_out: ByteWriter,
    abandoned: asyncio.Event | None = None,
) -> None:
    """One TCP connection; a failure is reported on the error stream, as the kubelet does.

    `abandoned` is set when the client resets the data stream (client-go does so as
    soon as its local connection closes); the pod connection is then dropped at once
    rather than when the pod decides to close it.
    """
    try:
        work = asyncio.ensure_future(backend.port_forward(request.sandbox_id, port, data_in, data_out))
        waiters: set[asyncio.Future[Any]] = {work}
        gone = asyncio.ensure_future(abandoned.wait()) if abandoned is not None else None
        if gone is not None:
            waiters.add(gone)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if gone is not None:
                gone.cancel()
            if not work.done():
                work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
    except (StreamingError, OSError) as exc:
        message = f"error forwarding port {port} to pod {request.sandbox_id}: {exc}"
        log.info("%s", message)
        await error_out.write(message.encode())
    finally:
        await data_out.close()
        await error_out.close()


async def serve_spdy(
    conn: SpdyConnection,
    request: PortForwardRequest,
    backend: StreamBackend,
    pair_timeout: float = PAIR_TIMEOUT,
) -> None:
    """Pair streams by requestID and forward each pair until the client hangs up."""
    pending: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    deadlines: dict[str, float] = {}
    try:
        while True:
            stream = await conn.accept()
            if stream is None:
                break
            kind = stream.header("streamtype")
            if kind not in ("data", "error"):
                await stream.reset()
                continue
            request_id = stream.header("requestid")
            if request_id is None:
                # Clients before requestID existed opened the error stream, then the data stream.
                request_id = str(stream.id if kind == "error" else stream.id - 2)
            try:
                port = parse_port(stream.header("port"))
            except InvalidArgument:
                await stream.reset()
                continue
            await stream.reply()
            pair = pending.setdefault(request_id, {})
            pair[kind] = stream
            deadlines.setdefault(request_id, loop.time() + pair_timeout)
            if "data" in pair and "error" in pair:
                del pending[request_id]
                deadlines.pop(request_id, None)
                data, err = pair["data"], pair["error"]
                task = asyncio.create_task(forward_one(backend, request, port, data, data, err, data.reset_event))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            now = loop.time()
            for rid in [r for r, d in deadlines.items() if d < now]:
                for half in pending.pop(rid, {}).values():
                    await half.reset()
                deadlines.pop(rid, None)
    finally:
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def serve_websocket(conn: ChannelConnection, request: PortForwardRequest, backend: StreamBackend) -> None:
    """Forward one TCP connection per requested port; close when all have ended."""
    if not request.ports:
        await conn.writer(1).write(b"no ports to forward: pass the ports query parameter, e.g. ?ports=8080")
        return
    jobs = []
    for i, port in enumerate(request.ports):
        data_in = conn.reader(2 * i)
        data_out, err_out = conn.writer(2 * i), conn.writer(2 * i + 1)
        prefix = struct.pack("<H", port)
        await data_out.write(prefix)
        await err_out.write(prefix)
        jobs.append(forward_one(backend, request, port, data_in, data_out, err_out))
    run: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*jobs))
    gone: asyncio.Future[Any] = asyncio.ensure_future(conn.wait_closed())
    try:
        await asyncio.wait({run, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
