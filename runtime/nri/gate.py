"""The creation gate: creations run side by side, a plugin's synchronisation runs alone.

A pod or container is "being created" from its NRI hook until its record is
stored. Synchronising a new plugin waits until no creation is in that window
and keeps new ones out until it is done, so the state it sends the plugin is
never missing a pod or container whose hook the plugin did not get.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class CreationGate:
    def __init__(self) -> None:
        self._creating = 0
        self._synchronizing = False
        self._changed = asyncio.Condition()

    @property
    def creating_now(self) -> int:
        return self._creating

    @contextlib.asynccontextmanager
    async def creating(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._synchronizing)
            self._creating += 1
        try:
            yield
        finally:
            async with self._changed:
                self._creating -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def synchronizing(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._synchronizing)
            self._synchronizing = True
            try:
                await self._changed.wait_for(lambda: self._creating == 0)
            except BaseException:
                self._synchronizing = False
                self._changed.notify_all()
                raise
        try:
            yield
        finally:
            async with self._changed:
                self._synchronizing = False
                self._changed.notify_all()
