"""A failed layer's undo runs to its end even when a sibling's failure cancels it meanwhile."""

from __future__ import annotations

import asyncio

import pytest
from crishim.images.tasks import complete_despite_cancel


async def test_undo_finishes_although_the_caller_is_cancelled_twice() -> None:
    finished = asyncio.Event()
    started = asyncio.Event()
    release = asyncio.Event()

    async def undo() -> None:
        started.set()
        await release.wait()
        finished.set()

    caller = asyncio.create_task(complete_despite_cancel(undo()))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0)  # the caller takes the first cancellation and waits on
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done(), "the caller gave up while its undo was still running"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished.is_set()


async def test_undo_errors_reach_the_caller() -> None:
    async def undo() -> None:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        await complete_despite_cancel(undo())
