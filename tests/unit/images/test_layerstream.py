"""ChunkFeed: the download's hand-over to the unpack thread stays within its byte budget."""

from __future__ import annotations

import asyncio
import threading

import pytest
from crishim.images.errors import UnpackAborted
from crishim.images.layerstream import ChunkFeed


async def test_put_waits_while_the_budget_is_handed_over_and_resumes_as_the_thread_consumes() -> None:
    feed = ChunkFeed(limit=4000, release_step=1000)
    for _ in range(4):
        await feed.put(b"x" * 1000)
    blocked = asyncio.ensure_future(feed.put(b"y" * 1000))
    await asyncio.sleep(0.05)
    assert not blocked.done(), "a fifth KB went over the 4 KB budget"

    got: list[bytes | None] = []
    reader = threading.Thread(target=lambda: got.append(feed()))
    reader.start()
    await asyncio.to_thread(reader.join)
    await asyncio.wait_for(blocked, 5)
    assert got == [b"x" * 1000]

    feed.finish()
    rest = await asyncio.to_thread(lambda: [feed() for _ in range(5)])
    assert rest == [b"x" * 1000] * 3 + [b"y" * 1000, None]
    assert await asyncio.to_thread(feed) is None, "the end stays the end for every later read"


async def test_a_consumer_that_stops_reading_never_leaves_put_waiting() -> None:
    feed = ChunkFeed(limit=2000, release_step=1000)
    await feed.put(b"x" * 2000)
    blocked = asyncio.ensure_future(feed.put(b"y"))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    feed.consumer_done()
    await asyncio.wait_for(blocked, 5)
    await asyncio.wait_for(feed.put(b"z" * 10_000), 5)  # dropped: nobody reads any more


async def test_abort_ends_the_reading_thread() -> None:
    feed = ChunkFeed()
    await feed.put(b"x")
    feed.abort()
    assert await asyncio.to_thread(feed) == b"x"
    with pytest.raises(UnpackAborted):
        await asyncio.to_thread(feed)
