"""The pull machinery of the image store: shared pulls, a watchdog, and the commit of an image.

ImageStore (store.py) holds a Puller and gives it a StoreAccess: the content store,
the metadata, where layers go, the registry client and how to delete a tree. The layers
themselves come through a LayerFetcher (layers.py).

Pulls of one reference (into one image set) share one task. A pull whose every
caller gave up is cancelled and undone; so is one that receives no bytes for
`pull_progress_timeout` seconds.

With a policy (policy.py) the resolved manifest is checked (trust.py) before its config or
any layer is fetched: a refused image leaves nothing behind. Pulls chosen by different
policy files (per-namespace policies) never share a task.

Each pull holds a ticket of the download scheduler (scheduler.py) with its priority: a pod
of a priority namespace, or one annotated for it, has its layers downloaded first. A caller
of better priority joining a running pull raises that pull's priority.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import functools
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import DeadlineExceeded, NotFound
from .layers import LayerFetcher, LayerJob, StoreAccess
from .manifest import Credentials, Descriptor, parse_image_config
from .metadata import SHARED_SET
from .policy import Policy, PolicySet
from .records import ImageRecord, ProgressFn, PullProgress
from .reference import Reference, parse_reference
from .scheduler import Priority, PullTicket, pull_priority
from .tasks import SharedTask, gather_or_cancel, in_thread, shared_in
from .trust import ImageVerifier, VerdictFn
from .unpack import chain_ids

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _PullState:
    """One running pull: its listeners, and when it last received bytes (the watchdog's clock)."""

    ref: Reference
    listeners: list[ProgressFn]
    ticket: PullTicket
    image_set: str = SHARED_SET
    policy: Policy | None = None
    on_verdict: VerdictFn | None = None
    last_progress: float = field(default_factory=time.monotonic)
    bytes: int = 0

    def touch(self) -> None:
        self.last_progress = time.monotonic()

    def received(self, n: int) -> None:
        self.bytes += n
        self.touch()

    def report(self, desc: Descriptor, downloaded: int, *, done: bool, cached: bool = False) -> None:
        event = PullProgress(
            ref=str(self.ref), layer=desc.digest, downloaded=downloaded, total=desc.size, done=done, cached=cached
        )
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a broken progress display must not break the pull
                log.exception("progress listener failed")


class Puller:
    """Pulls into the image store: the store holds one and hands it what it needs.

    It owns the pull state (shared pulls, layers a running pull still needs, the
    counters); the store asks `in_use` before deleting a layer, so garbage
    collection never races a pull.
    """

    def __init__(
        self,
        store: StoreAccess,
        *,
        max_parallel_layers: int,
        pull_progress_timeout: float,
        sync_layers: bool,
        policies: PolicySet | None = None,
        priority_namespaces: Iterable[str] = ("kube-system",),
    ) -> None:
        self.content = store.content
        self.meta = store.meta
        self.layers = LayerFetcher(store, max_parallel=max_parallel_layers, sync_layers=sync_layers)
        self._registry = store.registry
        self._remove_tree = store.remove_tree
        self.pull_progress_timeout = pull_progress_timeout
        self.policies = policies
        self.priority_namespaces = frozenset(priority_namespaces)
        self.verifier = ImageVerifier()
        self._pulls: dict[str, SharedTask[ImageRecord]] = {}
        self._tickets: dict[str, PullTicket] = {}  # of the running pulls, by the key of _pulls
        self._needed: collections.Counter[str] = collections.Counter()
        # Counters for the metrics exporter.
        self.pulls_total = 0
        self.pull_failures_total = 0
        self.pulls_in_flight = 0

    @property
    def bytes_pulled_total(self) -> int:
        return self.layers.bytes_downloaded_total

    def in_use(self, chain_id: str) -> bool:
        """True while a pull is unpacking the layer or still needs it."""
        return self.layers.running(chain_id) or bool(self._needed[chain_id])

    def cancel_all(self) -> builtins.list[asyncio.Task[ImageRecord]]:
        """Cancels every pull; returns their tasks for the caller to await."""
        tasks = [shared.task for shared in self._pulls.values()]
        for task in tasks:
            task.cancel()
        return tasks

    def _collect_unreferenced(self, chains: list[str]) -> None:
        """After a failed or cancelled pull: drop layers it unpacked that no image uses."""
        for chain in chains:
            running = self.layers.running_task(chain)
            if self._needed[chain] or (running and not running.done()) or self.meta.layer_refcount(chain):
                continue
            row = self.meta.layer(chain)
            if row is None:
                continue
            self.meta.delete_layer(chain)
            self._remove_tree(self.layers.layer_dir(chain))
            if not self.meta.blob_in_use(row.blob_digest):
                self.content.delete(row.blob_digest)

    async def pull(
        self,
        ref: str,
        credentials: Credentials | None = None,
        progress: ProgressFn | None = None,
        image_set: str = SHARED_SET,
        namespace: str = "",
        on_verdict: VerdictFn | None = None,
        annotations: Mapping[str, str] | None = None,
        priority: Priority | None = None,
    ) -> ImageRecord:
        """Pulls `ref` into `image_set` (or joins a pull of it already running) and returns the
        stored image; layers another set already has are not downloaded again.

        `namespace` (the pod's) chooses the policy; `on_verdict` hears the policy's verdict
        when this call starts the pull (a caller joining a running pull is not told).
        `namespace` and the sandbox's `annotations` choose the download priority, unless
        `priority` is given (pre-fetch pulls in the background)."""
        parsed = parse_reference(ref)
        if priority is None:
            priority = pull_priority(namespace, annotations or {}, self.priority_namespaces)
        policy = self.policies.for_namespace(namespace) if self.policies is not None else None
        key = f"{image_set}\0{parsed}\0{policy.source if policy else ''}"
        shared = self._pulls.get(key)
        if shared is None:
            ticket = self._tickets[key] = PullTicket(str(parsed), priority)
            state = _PullState(parsed, [], ticket, image_set, policy, on_verdict)
            shared = shared_in(
                self._pulls,
                key,
                lambda: asyncio.create_task(self._pull_watched(state, credentials, key), name=f"pull {parsed}"),
            )
            shared.listeners = state.listeners
        elif (running := self._tickets.get(key)) is not None:
            running.raise_to(priority)
        if progress is not None:
            shared.listeners.append(progress)
        try:
            return await shared.join()
        finally:
            if progress is not None and progress in shared.listeners:
                shared.listeners.remove(progress)

    async def _pull_watched(self, state: _PullState, credentials: Credentials | None, key: str) -> ImageRecord:
        """The pull, cancelled when it receives nothing for `pull_progress_timeout` seconds."""
        ref = state.ref
        self.pulls_in_flight += 1
        self.pulls_total += 1
        started = time.monotonic()
        log.info("pull %s: started (%s priority)", ref, state.ticket.priority.name.lower())
        inner = asyncio.create_task(self._pull(ref, credentials, state))
        try:
            record = await self._watch(inner, state)
        except BaseException as exc:
            if not inner.done():
                inner.cancel()
                await asyncio.wait({inner})
            self.pull_failures_total += 1
            log.warning(
                "pull %s: failed after %.1fs: %s",
                ref,
                time.monotonic() - started,
                "cancelled" if isinstance(exc, asyncio.CancelledError) else exc,
            )
            raise
        finally:
            self.pulls_in_flight -= 1
            self._tickets.pop(key, None)
        elapsed = max(time.monotonic() - started, 1e-6)
        log.info(
            "pull %s: done, image %s, %d bytes downloaded (image size %d) in %.2fs, %.1f MB/s",
            ref,
            record.id,
            state.bytes,
            record.size,
            elapsed,
            state.bytes / elapsed / 1e6,
        )
        return record

    async def _watch(self, inner: asyncio.Task[ImageRecord], state: _PullState) -> ImageRecord:
        check = max(0.05, min(self.pull_progress_timeout / 4, 5.0))
        while True:
            done, _ = await asyncio.wait({inner}, timeout=check)
            if done:
                return inner.result()
            idle = time.monotonic() - state.last_progress
            if idle > self.pull_progress_timeout:
                inner.cancel()
                await asyncio.wait({inner})
                raise DeadlineExceeded(
                    f"pull of {state.ref} received no data for {idle:.0f}s (image_pull_progress_timeout="
                    f"{self.pull_progress_timeout:g}s) and was cancelled"
                )

    async def _pull(self, ref: Reference, credentials: Credentials | None, state: _PullState) -> ImageRecord:
        registry = self._registry()
        manifest, session = await registry.resolve(ref, credentials)
        state.touch()
        if state.policy is not None:
            verdict = await self.verifier.check(state.policy, registry, session, ref, manifest)
            log.info("pull %s: %s", ref, verdict)
            if state.on_verdict is not None:
                state.on_verdict(verdict)
            state.touch()
        else:
            self.verifier.counts["unsigned"] += 1
        config_raw = await registry.fetch_blob(session, manifest.config.digest)
        state.touch()
        config, diff_ids, verifiable = parse_image_config(config_raw, manifest, f"image {ref}")
        chains = chain_ids(diff_ids)
        image_id = manifest.config.digest
        self._needed.update(chains)
        try:
            jobs = [
                LayerJob(session, desc, diff_id, verifiable, chain, tuple(chains[:i]), f"layer {desc.digest} of {ref}")
                for i, (desc, diff_id, chain) in enumerate(zip(manifest.layers, diff_ids, chains, strict=True))
            ]
            await gather_or_cancel([self.layers.get(job, state) for job in jobs])
            size = manifest.config.size + sum(d.size for d in manifest.layers)

            def commit() -> None:
                if not self.content.has(image_id):
                    self.content.write_bytes(image_id, config_raw)
                self.meta.record_image(
                    image_id=image_id,
                    config=config,
                    manifest_digest=manifest.top_digest,
                    manifest=manifest.raw,
                    size=size,
                    layers=chains,
                    tags=[t for t in [ref.repo_tag] if t],
                    digests=[ref.repo_digest(manifest.top_digest)],
                    image_set=state.image_set,
                )

            await in_thread(commit)
        finally:
            self._needed.subtract(chains)
            self._needed += collections.Counter()  # drops zero counts
            if self.meta.image(image_id, None, include_removed=True) is None:
                # A cancelled multi-GB pull leaves GBs to delete: never on the event loop.
                await in_thread(functools.partial(self._collect_unreferenced, chains))
        row = self.meta.image(image_id, state.image_set)
        if row is None:
            raise NotFound(f"image {image_id} was removed while {ref} was being pulled; pull it again")
        return row.record()
