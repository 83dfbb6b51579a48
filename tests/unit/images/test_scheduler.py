"""The download scheduler: the node-wide bound, round-robin between pulls, priority first."""

from __future__ import annotations

import asyncio

import pytest
from crishim.images.scheduler import (
    PRIORITY_ANNOTATION,
    DownloadClaim,
    DownloadScheduler,
    Priority,
    PullTicket,
    pull_priority,
)


class Recorder:
    """Queues layer downloads as pulls do and records the order in which they got a slot."""

    def __init__(self, scheduler: DownloadScheduler) -> None:
        self.scheduler = scheduler
        self.order: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.running: dict[str, asyncio.Event] = {}

    def queue(self, ticket: PullTicket, layer: str, claim: DownloadClaim | None = None) -> DownloadClaim:
        claim = claim or DownloadClaim([ticket])
        finish = self.running[layer] = asyncio.Event()

        async def download() -> None:
            await self.scheduler.acquire(claim)
            self.order.append(layer)
            try:
                await finish.wait()
            finally:
                self.scheduler.release()

        self.tasks.append(asyncio.create_task(download()))
        return claim

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def finish(self, layer: str) -> None:
        self.running[layer].set()
        await self.settle()

    async def drain(self) -> None:
        """Finishes every download in the order the slots are granted."""
        while len(self.order) < len(self.running) or not all(e.is_set() for e in self.running.values()):
            await self.settle()
            for layer in list(self.order):
                self.running[layer].set()
        await asyncio.gather(*self.tasks)


async def test_slots_never_exceed_the_limit_and_all_downloads_run() -> None:
    scheduler = DownloadScheduler(2)
    rec = Recorder(scheduler)
    tickets = [PullTicket(f"p{i}") for i in range(3)]
    for i, ticket in enumerate(tickets):
        for layer in range(4):
            rec.queue(ticket, f"p{i}-l{layer}")
    await rec.settle()
    assert scheduler.active == 2
    await rec.drain()
    assert len(rec.order) == 12
    assert scheduler.peak == 2
    assert scheduler.active == 0
    assert scheduler.waiting == 0


async def test_pulls_take_turns_instead_of_first_come_first_served() -> None:
    scheduler = DownloadScheduler(1)
    rec = Recorder(scheduler)
    big, small = PullTicket("big"), PullTicket("small")
    for layer in range(5):
        rec.queue(big, f"big-{layer}")
    await rec.settle()
    for layer in range(2):
        rec.queue(small, f"small-{layer}")
    await rec.drain()
    # big-0 held the slot when small arrived; from then on the two pulls alternate.
    assert rec.order == ["big-0", "small-0", "big-1", "small-1", "big-2", "big-3", "big-4"]


async def test_high_priority_pull_is_served_before_every_waiting_normal_one() -> None:
    scheduler = DownloadScheduler(1)
    rec = Recorder(scheduler)
    normal_a, normal_b, urgent = PullTicket("a"), PullTicket("b"), PullTicket("urgent", Priority.HIGH)
    for layer in range(3):
        rec.queue(normal_a, f"a-{layer}")
        rec.queue(normal_b, f"b-{layer}")
    await rec.settle()
    for layer in range(2):
        rec.queue(urgent, f"urgent-{layer}")
    await rec.drain()
    assert rec.order[:3] == ["a-0", "urgent-0", "urgent-1"]
    assert sorted(rec.order[3:]) == ["a-1", "a-2", "b-0", "b-1", "b-2"]


async def test_background_pulls_wait_for_pods() -> None:
    scheduler = DownloadScheduler(1)
    rec = Recorder(scheduler)
    prefetch, pod = PullTicket("prefetch", Priority.BACKGROUND), PullTicket("pod")
    for layer in range(3):
        rec.queue(prefetch, f"prefetch-{layer}")
    await rec.settle()
    rec.queue(pod, "pod-0")
    await rec.drain()
    assert rec.order == ["prefetch-0", "pod-0", "prefetch-1", "prefetch-2"]


async def test_a_high_priority_pull_joining_a_queued_layer_raises_it() -> None:
    scheduler = DownloadScheduler(1)
    rec = Recorder(scheduler)
    slow, urgent = PullTicket("slow"), PullTicket("urgent", Priority.HIGH)
    for layer in range(4):
        rec.queue(slow, f"slow-{layer}")
    shared = rec.queue(slow, "shared")
    await rec.settle()
    shared.join(urgent)
    await rec.drain()
    assert rec.order[:2] == ["slow-0", "shared"]


async def test_raising_a_running_pull_moves_its_waiting_layers_up() -> None:
    scheduler = DownloadScheduler(1)
    rec = Recorder(scheduler)
    first, joined = PullTicket("first"), PullTicket("joined")
    rec.queue(first, "first-0")
    rec.queue(first, "first-1")
    rec.queue(joined, "joined-0")
    await rec.settle()
    joined.raise_to(Priority.HIGH)
    joined.raise_to(Priority.BACKGROUND)  # never lowers
    assert joined.priority is Priority.HIGH
    await rec.drain()
    assert rec.order == ["first-0", "joined-0", "first-1"]


async def test_a_cancelled_waiter_gives_up_its_place_and_a_cancelled_grant_its_slot() -> None:
    scheduler = DownloadScheduler(1)
    ticket = PullTicket("p")
    await scheduler.acquire(DownloadClaim([ticket]))
    queued = asyncio.create_task(scheduler.acquire(DownloadClaim([ticket])))
    await asyncio.sleep(0)
    assert scheduler.waiting == 1
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert scheduler.waiting == 0
    granted = asyncio.create_task(scheduler.acquire(DownloadClaim([ticket])))
    await asyncio.sleep(0)
    scheduler.release()  # the slot goes to `granted`, which is cancelled before it runs
    granted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert scheduler.active == 0
    await asyncio.wait_for(scheduler.acquire(DownloadClaim([ticket])), 1)
    assert scheduler.active == 1


@pytest.mark.parametrize(
    ("namespace", "annotations", "expected"),
    [
        ("kube-system", {}, Priority.HIGH),
        ("default", {}, Priority.NORMAL),
        ("default", {PRIORITY_ANNOTATION: "high"}, Priority.HIGH),
        ("default", {PRIORITY_ANNOTATION: " High "}, Priority.HIGH),
        ("default", {PRIORITY_ANNOTATION: "low"}, Priority.NORMAL),
        ("", {}, Priority.NORMAL),
    ],
)
def test_pull_priority(namespace: str, annotations: dict[str, str], expected: Priority) -> None:
    assert pull_priority(namespace, annotations, ["kube-system"]) is expected
