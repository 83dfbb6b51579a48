"""Local TCP for tests: a port nothing listens on yet, and a throwaway server on this host.

Tests that map host ports, point a daemon's metrics at a port, or forward a stream to
a local service need one of these; the kernel picks the port (bind to 0), so parallel
runs do not collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the kernel's pick; closed again before returning)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def tcp_server(handle: Handler) -> AsyncIterator[int]:
    """Serves `handle` on 127.0.0.1 for the block; yields the port."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
