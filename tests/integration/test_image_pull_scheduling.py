"""Fair parallel pulls against the real test registry, through a proxy that counts and slows
layer downloads: the node-wide limit holds, and a high-priority pull is served first."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from crishim.images import build as b
from crishim.images.records import ProgressFn, PullProgress
from crishim.images.store import ImageStore

from tests.support.blobproxy import BlobProxy
from tests.support.push import Pusher

if TYPE_CHECKING:
    from tests.support.registry import RegistryServer

pytest_plugins = ["tests.support.registry"]

pytestmark = pytest.mark.root


def random_image(name: str, layers: int, layer_bytes: int) -> b.BuiltImage:
    """Layers of random bytes (gzip cannot shrink them), none shared with another image."""
    return b.build_image(
        [[b.regular(f"{name}/{i}", os.urandom(layer_bytes))] for i in range(layers)], b.ImageConfig(cmd=("sh",))
    )


def push(registry: RegistryServer, repo: str, image: b.BuiltImage) -> str:
    with Pusher(registry.host) as pusher:
        pusher.push(f"sched/{repo}", image, ["1"])
    return f"{registry.host}/sched/{repo}:1"


@pytest.fixture
async def proxy(registry: RegistryServer) -> AsyncIterator[BlobProxy]:
    p = BlobProxy(registry.url)
    await p.start()
    yield p
    await p.stop()


def store_with_limit(tmp_path: Path, limit: int) -> ImageStore:
    return ImageStore(tmp_path / "images", None, max_parallel_layers=limit, priority_namespaces=["kube-system"])


class Timeline:
    """Layer completions of several pulls, in the order they happened."""

    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []  # (pull, layer digest)
        self.first_layer_done = asyncio.Event()

    def listener(self, pull: str) -> ProgressFn:
        def hear(event: PullProgress) -> None:
            if event.done and not event.cached:
                self.done.append((pull, event.layer))
                self.first_layer_done.set()

        return hear

    def count(self, pull: str, upto: int | None = None) -> int:
        return sum(1 for p, _ in self.done[:upto] if p == pull)


async def test_high_priority_pull_overtakes_a_large_pull_in_flight(
    tmp_path: Path, registry: RegistryServer, proxy: BlobProxy
) -> None:
    big = random_image("big", 16, 256 * 1024)
    small = random_image("small", 3, 64 * 1024)
    big_ref, small_ref = proxy.ref(push(registry, "big", big)), proxy.ref(push(registry, "small", small))
    proxy.counted = {layer.digest for layer in big.layers + small.layers}
    store = store_with_limit(tmp_path, 1)
    timeline = Timeline()
    try:
        big_pull = asyncio.create_task(store.pull(big_ref, progress=timeline.listener("big"), namespace="default"))
        await asyncio.wait_for(timeline.first_layer_done.wait(), 60)
        small_record = await store.pull(small_ref, progress=timeline.listener("small"), namespace="kube-system")
        assert not big_pull.done(), "the large pull finished first: nothing was overtaken"
        big_record = await big_pull
    finally:
        await store.aclose()
    assert small_record.id == small.config_digest
    assert big_record.id == big.config_digest
    small_last = max(i for i, (pull, _) in enumerate(timeline.done) if pull == "small")
    small_first = min(i for i, (pull, _) in enumerate(timeline.done) if pull == "small")
    # FIFO by layer would have served all 16 big layers first; here the big pull had at most
    # the layer in flight when the small pull queued (and the one before), and none came
    # between the small pull's layers: a high-priority pull takes every freed slot.
    assert timeline.count("big", small_last) <= 2, timeline.done
    assert timeline.count("big", small_last) == timeline.count("big", small_first), timeline.done
    assert timeline.count("big") == 16
    assert proxy.peak == 1


async def test_the_node_wide_download_limit_is_never_exceeded(
    tmp_path: Path, registry: RegistryServer, proxy: BlobProxy
) -> None:
    images = {name: random_image(name, 5, 128 * 1024) for name in ("one", "two", "three")}
    refs = {name: proxy.ref(push(registry, name, image)) for name, image in images.items()}
    proxy.counted = {layer.digest for image in images.values() for layer in image.layers}
    store = store_with_limit(tmp_path, 2)
    try:
        records = await asyncio.gather(*(store.pull(ref) for ref in refs.values()))
        assert store.puller.layers.scheduler.peak == 2
    finally:
        await store.aclose()
    assert [r.id for r in records] == [image.config_digest for image in images.values()]
    assert proxy.peak == 2  # counted at the registry's side: the limit was reached, never passed
    assert len(proxy.served) == 15


async def test_pulls_take_turns_rather_than_queueing_behind_each_other(
    tmp_path: Path, registry: RegistryServer, proxy: BlobProxy
) -> None:
    first = random_image("first", 10, 128 * 1024)
    second = random_image("second", 3, 128 * 1024)
    first_ref, second_ref = proxy.ref(push(registry, "first", first)), proxy.ref(push(registry, "second", second))
    proxy.counted = {layer.digest for layer in first.layers + second.layers}
    store = store_with_limit(tmp_path, 1)
    timeline = Timeline()
    try:
        first_pull = asyncio.create_task(store.pull(first_ref, progress=timeline.listener("first")))
        await asyncio.wait_for(timeline.first_layer_done.wait(), 60)
        await store.pull(second_ref, progress=timeline.listener("second"))
        assert not first_pull.done()
        await first_pull
    finally:
        await store.aclose()
    # Same priority: round-robin, so the second pull needed about as many of the first
    # pull's layers as it had layers itself, not all ten of them.
    second_last = max(i for i, (pull, _) in enumerate(timeline.done) if pull == "second")
    assert timeline.count("first", second_last) <= 3 + 2, timeline.done
