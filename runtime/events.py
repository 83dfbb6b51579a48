"""Container lifecycle events for GetContainerEvents subscribers (evented PLEG).

Publishing never waits: each subscriber has a bounded queue, and one that
falls behind is dropped with a log line rather than slowing the daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

log = logging.getLogger("crishim.events")

SUBSCRIBER_BUFFER = 1024

CREATED = "CREATED"
STARTED = "STARTED"
STOPPED = "STOPPED"
DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    container_id: str
    sandbox_id: str
    kind: str  # CREATED, STARTED, STOPPED, DELETED
    created_at: int  # ns


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[ContainerEvent | None]] = set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, event: ContainerEvent) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("dropping a container event subscriber that fell %d events behind", queue.qsize())
                self._subscribers.discard(queue)
                # Make room for the end marker so the subscriber's stream ends now.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)

    async def subscribe(self) -> AsyncIterator[ContainerEvent]:
        queue: asyncio.Queue[ContainerEvent | None] = asyncio.Queue(SUBSCRIBER_BUFFER)
        self._subscribers.add(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        for queue in list(self._subscribers):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
        self._subscribers.clear()
