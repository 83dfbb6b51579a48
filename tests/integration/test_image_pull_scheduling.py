"""Fair parallel pulls against the real test registry, through a proxy that counts and slows
layer downloads: the node-wide limit holds, and a high-priority pull is served first."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from crishim.images import build as b
from crishim.images.records import ImageRecord, ProgressFn, PullProgress
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

    def span(self, pull: str) -> tuple[int, int]:
        """Where in `done` the pull's first and last layers are."""
        where = [i for i, (p, _) in enumerate(self.done) if p == pull]
        return where[0], where[-1]


@dataclass(frozen=True)
class PodPull:
    name: str
    image: b.BuiltImage
    namespace: str  # of the pod asking: kube-system has priority


async def pull_during(
    tmp_path: Path, registry: RegistryServer, proxy: BlobProxy, first: PodPull, second: PodPull
) -> Timeline:
    """Pulls `first` with one download slot; once its first layer is in, pulls `second` to the
    end, then `first`. Fails when `first` was done before `second`: nothing overtook it."""
    refs = {pull.name: proxy.ref(push(registry, pull.name, pull.image)) for pull in (first, second)}
    proxy.counted = {layer.digest for layer in first.image.layers + second.image.layers}
    store = store_with_limit(tmp_path, 1)
    timeline = Timeline()

    def start(pull: PodPull) -> Awaitable[ImageRecord]:
        return store.pull(refs[pull.name], progress=timeline.listener(pull.name), namespace=pull.namespace)

    try:
        first_pull = asyncio.ensure_future(start(first))
        await asyncio.wait_for(timeline.first_layer_done.wait(), 60)
        assert (await start(second)).id == second.image.config_digest
        assert not first_pull.done(), f"{first.name} finished first: nothing was overtaken"
        assert (await first_pull).id == first.image.config_digest
    finally:
        await store.aclose()
    assert proxy.peak == 1
    return timeline


async def test_high_priority_pull_overtakes_a_large_pull_in_flight(
    tmp_path: Path, registry: RegistryServer, proxy: BlobProxy
) -> None:
    big = PodPull("big", random_image("big", 24, 512 * 1024), "default")
    small = PodPull("small", random_image("small", 3, 64 * 1024), "kube-system")
    timeline = await pull_during(tmp_path, registry, proxy, big, small)
    small_first, small_last = timeline.span("small")
    # FIFO by layer would have served all 24 big layers first. Here the small pull waited
    # only for the big layers done before its own were queued (a matter of its manifest and
    # config round trips, so counted loosely), and once queued it took every freed slot:
    # no big layer came between its first and its last.
    assert timeline.count("big", small_last) <= 12, timeline.done
    assert timeline.count("big", small_last) == timeline.count("big", small_first), timeline.done
    assert timeline.count("big") == 24


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
    first = PodPull("first", random_image("first", 20, 512 * 1024), "default")
    second = PodPull("second", random_image("second", 3, 128 * 1024), "default")
    timeline = await pull_during(tmp_path, registry, proxy, first, second)
    # Same priority: round-robin, so the second pull did not wait for all twenty of the first
    # pull's layers (only for those done before its own were queued, and one per turn after);
    # and unlike a high-priority pull it did not take every slot: the two alternated.
    second_first, second_last = timeline.span("second")
    assert timeline.count("first", second_last) <= 10, timeline.done
    assert timeline.count("first", second_last) > timeline.count("first", second_first), timeline.done
