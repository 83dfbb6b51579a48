"""Pinned pre-fetch: images a node keeps pulled before any pod asks for them.

The list has two sources, both kept in the image database (`prefetch` table) so a
restart knows them: `[images] prefetch` of the daemon's config (source "config",
replaced at each start-up) and `crishim images prefetch FILE` (source "manual", kept
until replaced). Each image is pinned, so the kubelet's image garbage collection skips it
and RemoveImage refuses it (store.py).

The daemon runs `Prefetcher.run` as a background task: start-up and CRI serving never
wait for it. Its first pass pulls what is missing and only pins what is already present
(a restart downloads nothing). Every `refresh_interval` seconds it pulls each tag again;
when a tag has moved, the new image is pinned and the old one unpinned, so garbage
collection may take it once no container uses it. Failed pulls are retried sooner.
The images of one pass are pulled side by side.
Pre-fetch pulls have background priority (scheduler.py): a pod waiting for its image
goes first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .errors import NotFound
from .records import ImageRecord, ProgressFn, PullProgress
from .reference import parse_reference
from .scheduler import Priority
from .tasks import gather_or_cancel

if TYPE_CHECKING:
    from .store import ImageStore

log = logging.getLogger(__name__)

CONFIG_SOURCE = "config"
MANUAL_SOURCE = "manual"
RETRY_SECONDS = 60.0  # a failed pre-fetch is tried again after this, or at the next refresh if sooner
PROGRESS_LOG_SECONDS = 5.0


def read_list(text: str) -> list[str]:
    """A pre-fetch list file: one reference a line; blank lines and `#` comments skipped."""
    refs = []
    for line in text.splitlines():
        ref = line.split("#", 1)[0].strip()
        if ref and ref not in refs:
            parse_reference(ref)  # InvalidArgument names the bad one
            refs.append(ref)
    return refs


class ProgressLog:
    """Logs a pre-fetch pull's bytes at most every few seconds, so a big image shows it is moving."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.layers: dict[str, tuple[int, int]] = {}
        self.logged = time.monotonic()

    def __call__(self, event: PullProgress) -> None:
        self.layers[event.layer] = (event.downloaded, max(event.total, 0))
        now = time.monotonic()
        if now - self.logged >= PROGRESS_LOG_SECONDS:
            self.logged = now
            done = sum(d for d, _ in self.layers.values())
            total = sum(t for _, t in self.layers.values())
            log.info("prefetch %s: %.1f of %.1f MB", self.ref, done / 1e6, total / 1e6)


class Prefetcher:
    """Keeps the pre-fetch list pulled and pinned in the shared image set."""

    def __init__(self, store: ImageStore, refresh_interval: float, keep_pinned: Iterable[str] = ()) -> None:
        self.store = store
        self.refresh_interval = refresh_interval
        self.keep_pinned = tuple(keep_pinned)  # references pinned for other reasons (the pause image)

    def refs(self) -> list[str]:
        return self.store.meta.prefetch_refs()

    def adopt(self, source: str, refs: Sequence[str], *, replace: bool) -> None:
        """Records `refs` under `source`; images only dropped references named are unpinned."""
        for ref in refs:
            parse_reference(ref)
        for ref in self.store.meta.set_prefetch_refs(source, list(refs), replace=replace):
            log.info("prefetch %s: no longer listed", ref)
            if (record := self._present(ref)) is not None:
                self._unpin_unless_wanted(record.id)

    async def ensure(self, ref: str, *, refresh: bool, progress: ProgressFn | None = None) -> ImageRecord:
        """Pins `ref`'s image, pulling it first when absent, or when `refresh` asks whether its tag moved."""
        present = self._present(ref)
        if present is not None and (not refresh or parse_reference(ref).digest):
            if not present.pinned:
                self.store.set_pinned(present.id, True)
            return present
        record = await self.store.pull(ref, progress=progress or ProgressLog(ref), priority=Priority.BACKGROUND)
        record = self.store.set_pinned(record.id, True)
        if present is not None and present.id != record.id:
            log.info("prefetch %s: the tag moved from %s to %s", ref, present.id, record.id)
            self._unpin_unless_wanted(present.id)
        return record

    async def run(self) -> None:
        """The background task: a first pass, then refreshes and retries until cancelled."""
        failed = await self._pass(self.refs(), refresh=False)
        next_refresh = time.monotonic() + self.refresh_interval if self.refresh_interval > 0 else None
        while True:
            waits = [RETRY_SECONDS] if failed else []
            if next_refresh is not None:
                waits.append(next_refresh - time.monotonic())
            if not waits:
                return  # all present, no refresh configured
            await asyncio.sleep(max(min(waits), 0.0))
            if next_refresh is not None and time.monotonic() >= next_refresh:
                failed = await self._pass(self.refs(), refresh=True)
                next_refresh = time.monotonic() + self.refresh_interval
            else:
                failed = await self._pass([r for r in self.refs() if r in failed], refresh=False)

    async def _pass(self, refs: list[str], *, refresh: bool) -> set[str]:
        """One round over `refs`, side by side (the download scheduler bounds the layers, and one
        stalled registry does not hold up the others); returns those that failed."""
        failed: set[str] = set()

        async def one(n: int, ref: str) -> None:
            try:
                record = await self.ensure(ref, refresh=refresh)
            except Exception as exc:  # noqa: BLE001 - one bad reference must not stop the others
                log.warning("prefetch %d/%d %s: failed, will retry: %s", n, len(refs), ref, exc)
                failed.add(ref)
            else:
                log.info("prefetch %d/%d %s: ready and pinned as %s", n, len(refs), ref, record.id)

        await gather_or_cancel([one(n, ref) for n, ref in enumerate(refs, 1)])
        return failed

    def _present(self, ref: str) -> ImageRecord | None:
        try:
            return self.store.resolve(ref)
        except NotFound:
            return None

    def _unpin_unless_wanted(self, image_id: str) -> None:
        """Unpins an image no listed (or otherwise pinned) reference names any more."""
        for ref in [*self.refs(), *self.keep_pinned]:
            record = self._present(ref)
            if record is not None and record.id == image_id:
                return
        try:
            self.store.set_pinned(image_id, False)
        except NotFound:
            return
        log.info("prefetch: image %s unpinned (no listed reference names it)", image_id)
