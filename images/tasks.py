"""Task plumbing for pulls: work several callers share, threads an undo must wait for.

A pull of one reference, and the download of one layer, is one asyncio task that
every caller asking for it joins (`SharedTask`); it is cancelled only when the
last of them gives up. Blocking work runs in threads whose cancellation waits
for the thread (`in_thread`), so an undo never races the work it undoes.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from .records import ProgressFn

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class SharedTask(Generic[T]):
    """A task several callers await; cancelled (and awaited) only when the last caller gives up."""

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiters = 0
        # Progress listeners of the callers sharing it: a pull reports each layer's to them.
        self.listeners: list[ProgressFn] = []

    async def join(self) -> T:
        self.waiters += 1
        try:
            return await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if not self.task.done() and self.waiters == 1:
                self.task.cancel()
                await asyncio.wait({self.task})
            raise
        finally:
            self.waiters -= 1


def shared_in(table: dict[K, SharedTask[T]], key: K, start: Callable[[], asyncio.Task[T]]) -> SharedTask[T]:
    """The task of `table` under `key`, started with `start` when there is none.

    A finished task leaves the table by itself, unless a newer one took its place.
    """
    shared = table.get(key)
    if shared is None:
        shared = table[key] = SharedTask(start())
        shared.task.add_done_callback(functools.partial(_forget, table, key, shared))
    return shared


def _forget(table: dict[K, SharedTask[T]], key: K, shared: SharedTask[T], _task: object) -> None:
    if table.get(key) is shared:
        del table[key]


async def in_thread(fn: Callable[[], T], stop: threading.Event | None = None) -> T:
    """asyncio.to_thread whose cancellation waits for the thread to finish first.

    A cancelled to_thread future lets its thread run on; cleanup that follows
    the cancel would then race with it (a layer renamed into place after its
    temp dir was "removed"). Waiting keeps undo steps strictly after the work.
    `stop`, set on cancellation, asks the thread to end early (work that checks it).
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        await asyncio.wait({future})
        raise


async def complete_despite_cancel(undo: Awaitable[None]) -> None:
    """Awaits `undo` to its end however often the caller is cancelled meanwhile; then
    re-raises the cancellation, if there was one."""
    task = asyncio.ensure_future(undo)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


async def gather_or_cancel(jobs: list[Awaitable[T]]) -> list[T]:
    """Like gather, but the first failure cancels (and awaits) the rest so nothing keeps writing."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks) if tasks else None
        raise
