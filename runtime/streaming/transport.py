"""Ending a multiplexed streaming connection (SPDY or WebSocket) once its protocol said goodbye."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class Transport(Protocol):
    """An asyncio.StreamWriter, or the WebSocket tunnel a SPDY connection may run in."""

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


async def close_transport(transport: Transport, read_task: asyncio.Task[None] | None) -> None:
    """Closes the socket, then stops the connection's read loop (unless this is the read loop)."""
    transport.close()
    with contextlib.suppress(ConnectionError, OSError):
        await transport.wait_closed()
    if read_task is not None and read_task is not asyncio.current_task():
        read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await read_task
