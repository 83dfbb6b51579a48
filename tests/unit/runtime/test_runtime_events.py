"""The event bus never lets a slow subscriber hold the daemon back."""

from __future__ import annotations

import asyncio

from crishim.runtime.events import SUBSCRIBER_BUFFER, ContainerEvent, EventBus


def event(i: int) -> ContainerEvent:
    return ContainerEvent(container_id=f"c{i}", sandbox_id="s", kind="CREATED", created_at=i)


async def test_two_subscribers_see_every_event_in_order() -> None:
    bus = EventBus()
    first, second = bus.subscribe(), bus.subscribe()
    # Subscriptions register on first iteration.
    tasks = [asyncio.ensure_future(anext(s)) for s in (first, second)]
    await asyncio.sleep(0)
    for i in range(3):
        bus.publish(event(i))
    heads = await asyncio.gather(*tasks)
    assert [h.container_id for h in heads] == ["c0", "c0"]
    assert [(await anext(first)).container_id for _ in range(2)] == ["c1", "c2"]
    assert [(await anext(second)).container_id for _ in range(2)] == ["c1", "c2"]
    bus.close()


async def test_a_subscriber_that_falls_behind_is_dropped_and_publishing_never_blocks() -> None:
    bus = EventBus()
    slow = bus.subscribe()
    pending = asyncio.ensure_future(anext(slow))
    await asyncio.sleep(0)
    for i in range(SUBSCRIBER_BUFFER * 3):  # would block forever if publish waited
        bus.publish(event(i))
    assert bus.subscriber_count == 0
    # Its stream ends (the kubelet subscribes again) rather than skipping events silently.
    try:
        await pending
    except StopAsyncIteration:
        pass
    else:
        raise AssertionError("a dropped subscriber still received events")
    fresh = bus.subscribe()
    waiting = asyncio.ensure_future(anext(fresh))
    await asyncio.sleep(0)
    bus.publish(event(7))
    assert (await waiting).container_id == "c7"  # the bus itself keeps working
    bus.close()
