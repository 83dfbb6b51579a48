"""The pull machinery of the image store: shared pulls, parallel layers, streamed unpack.

ImageStore (store.py) holds a Puller and gives it the content store, the metadata,
the layer directory, the registry client and how to delete a tree.

Pulls of one reference (into one image set) share one task; layers (by chain ID)
are shared across pulls; a semaphore bounds parallel layer downloads. A pull
whose every caller gave up is cancelled and undone; so is one that receives no
bytes for `pull_progress_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .content import BlobWriter, ContentStore
from .errors import (
    DataLoss,
    DeadlineExceeded,
    ImageError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from .manifest import BLOB_CHUNK, Credentials, Descriptor, Manifest
from .metadata import SHARED_SET, ImageRow, LayerRow, Metadata
from .records import ImageRecord, PullProgress
from .reference import Reference, parse_reference
from .unpack import (
    ChunkFeed,
    UnpackResult,
    chain_ids,
    file_source,
    resolve_deferred_links,
    syncfs,
    unpack_layer,
)

if TYPE_CHECKING:
    from .registry import RegistryClient

log = logging.getLogger(__name__)

T = TypeVar("T")
ProgressFn = Callable[[PullProgress], None]


class _Shared(Generic[T]):
    """A task several callers await; cancelled (and awaited) only when the last caller gives up."""

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiters = 0
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


@dataclass(slots=True)
class _PullState:
    ref: Reference
    listeners: list[ProgressFn]
    image_set: str = SHARED_SET
    last_progress: float = field(default_factory=time.monotonic)
    bytes: int = 0

    def touch(self) -> None:
        self.last_progress = time.monotonic()


@dataclass(slots=True)
class _Pending:
    """A verified layer waiting for its lower layers before hardlinks into them can be made."""

    tmpdir: Path
    chain: str
    result: UnpackResult
    writer: BlobWriter | None
    where: str

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _transport_errors() -> type[Exception]:
    import httpx

    return httpx.TransportError


class _Transient(Exception):
    """A layer download broke mid-stream; the layer is retried from the start."""


def image_record(row: ImageRow) -> ImageRecord:
    """The public record of a metadata row."""
    return ImageRecord(
        id=row.id,
        repo_tags=row.repo_tags,
        repo_digests=row.repo_digests,
        size=row.size,
        pinned=row.pinned,
        config=row.config,
        layers=row.layers,
        manifest_digest=row.manifest_digest,
        created=row.created,
        image_set=row.image_set,
    )


class Puller:
    """Pulls into the image store: the store holds one and hands it what it needs.

    It owns the pull state (shared pull and layer tasks, layers a running pull still
    needs, the download slots, the counters); the store asks `in_use` before deleting
    a layer, so garbage collection never races a pull.
    """

    def __init__(
        self,
        content: ContentStore,
        meta: Metadata,
        layers_dir: Path,
        registry: Callable[[], RegistryClient],
        remove_tree: Callable[[Path], None],
        *,
        max_parallel_layers: int,
        pull_progress_timeout: float,
        sync_layers: bool,
    ) -> None:
        self.content = content
        self.meta = meta
        self.layers_dir = layers_dir
        self._registry = registry
        self._remove_tree = remove_tree
        self.pull_progress_timeout = pull_progress_timeout
        self.sync_layers = sync_layers
        self._layer_slots = asyncio.Semaphore(max_parallel_layers)
        self._pulls: dict[str, _Shared[ImageRecord]] = {}
        self._layer_tasks: dict[str, _Shared[LayerRow]] = {}
        self._needed: collections.Counter[str] = collections.Counter()
        # Counters for the metrics exporter.
        self.bytes_pulled_total = 0
        self.pulls_total = 0
        self.pull_failures_total = 0
        self.pulls_in_flight = 0

    @property
    def registry(self) -> RegistryClient:
        return self._registry()

    def layer_dir(self, chain_id: str) -> Path:
        return self.layers_dir / chain_id.split(":", 1)[1]

    def in_use(self, chain_id: str) -> bool:
        """True while a pull is unpacking the layer or still needs it."""
        return chain_id in self._layer_tasks or bool(self._needed[chain_id])

    def cancel_all(self) -> builtins.list[asyncio.Task[ImageRecord]]:
        """Cancels every pull; returns their tasks for the caller to await."""
        tasks = [shared.task for shared in self._pulls.values()]
        for task in tasks:
            task.cancel()
        return tasks

    def _collect_unreferenced(self, chains: list[str]) -> None:
        """After a failed or cancelled pull: drop layers it unpacked that no image uses."""
        for chain in chains:
            running = self._layer_tasks.get(chain)
            if self._needed[chain] or (running and not running.task.done()) or self.meta.layer_refcount(chain):
                continue
            row = self.meta.layer(chain)
            if row is None:
                continue
            self.meta.delete_layer(chain)
            self._remove_tree(self.layer_dir(chain))
            if not self.meta.blob_in_use(row.blob_digest):
                self.content.delete(row.blob_digest)

    async def pull(
        self,
        ref: str,
        credentials: Credentials | None = None,
        progress: ProgressFn | None = None,
        image_set: str = SHARED_SET,
    ) -> ImageRecord:
        """Pulls `ref` into `image_set` (or joins a pull of it already running) and returns the
        stored image; layers another set already has are not downloaded again."""
        parsed = parse_reference(ref)
        key = f"{image_set}\0{parsed}"
        shared = self._pulls.get(key)
        if shared is None:
            listeners: builtins.list[ProgressFn] = []
            task = asyncio.create_task(
                self._pull_watched(parsed, credentials, listeners, image_set), name=f"pull {parsed}"
            )
            shared = _Shared(task)
            shared.listeners = listeners
            self._pulls[key] = shared
            task.add_done_callback(functools.partial(_forget, self._pulls, key, shared))
        if progress is not None:
            shared.listeners.append(progress)
        try:
            return await shared.join()
        finally:
            if progress is not None and progress in shared.listeners:
                shared.listeners.remove(progress)

    async def _pull_watched(
        self,
        ref: Reference,
        credentials: Credentials | None,
        listeners: builtins.list[ProgressFn],
        image_set: str = SHARED_SET,
    ) -> ImageRecord:
        state = _PullState(ref=ref, listeners=listeners, image_set=image_set)
        self.pulls_in_flight += 1
        self.pulls_total += 1
        started = time.monotonic()
        log.info("pull %s: started", ref)
        inner = asyncio.create_task(self._pull(ref, credentials, state))
        try:
            check = max(0.05, min(self.pull_progress_timeout / 4, 5.0))
            while True:
                done, _ = await asyncio.wait({inner}, timeout=check)
                if done:
                    record = inner.result()
                    break
                idle = time.monotonic() - state.last_progress
                if idle > self.pull_progress_timeout:
                    inner.cancel()
                    await asyncio.wait({inner})
                    raise DeadlineExceeded(
                        f"pull of {ref} received no data for {idle:.0f}s (image_pull_progress_timeout="
                        f"{self.pull_progress_timeout:g}s) and was cancelled"
                    )
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

    async def _pull(self, ref: Reference, credentials: Credentials | None, state: _PullState) -> ImageRecord:
        manifest, session = await self.registry.resolve(ref, credentials)
        state.touch()
        config_raw = await self.registry.fetch_blob(session, manifest.config.digest)
        state.touch()
        config, diff_ids, known = _parse_config(config_raw, manifest, ref)
        chains = chain_ids(diff_ids)
        image_id = manifest.config.digest
        self._needed.update(chains)
        try:
            jobs: builtins.list[Awaitable[LayerRow]] = [
                self._layer(
                    desc,
                    diff_id,
                    chain,
                    state,
                    functools.partial(self._download_layer, session, desc, diff_id if known else None, chain, state),
                    chains[:i],
                )
                for i, (desc, diff_id, chain) in enumerate(zip(manifest.layers, diff_ids, chains, strict=True))
            ]
            await _gather_or_cancel(jobs)
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

            await _in_thread(commit)
        finally:
            self._needed.subtract(chains)
            self._needed += collections.Counter()  # drops zero counts
            if self.meta.image(image_id, None, include_removed=True) is None:
                # A cancelled multi-GB pull leaves GBs to delete: never on the event loop.
                await _in_thread(functools.partial(self._collect_unreferenced, chains))
        row = self.meta.image(image_id, state.image_set)
        if row is None:
            raise NotFound(f"image {image_id} was removed while {ref} was being pulled; pull it again")
        return image_record(row)

    async def _layer(
        self,
        desc: Descriptor,
        diff_id: str,
        chain: str,
        state: _PullState,
        fetch: Callable[[], Awaitable[LayerRow | _Pending]],
        lowers: builtins.list[str],
    ) -> LayerRow:
        """The layer if already unpacked, else a (shared) download of it."""
        existing = self.meta.layer(chain)
        if existing is not None and self.layer_dir(chain).is_dir():
            self._report(state, desc, desc.size, done=True, cached=True)
            return existing
        shared = self._layer_tasks.get(chain)
        if shared is None:
            shared = _Shared(asyncio.create_task(self._layer_job(fetch, lowers), name=f"layer {chain}"))
            self._layer_tasks[chain] = shared
            shared.task.add_done_callback(functools.partial(_forget, self._layer_tasks, chain, shared))
        return await shared.join()

    async def _layer_job(
        self, fetch: Callable[[], Awaitable[LayerRow | _Pending]], lowers: builtins.list[str]
    ) -> LayerRow:
        """Downloads within the parallelism bound; a layer that hardlinks into lower layers then
        waits (outside the bound, so no deadlock) for those and copies the targets up."""
        async with self._layer_slots:
            outcome = await fetch()
        if isinstance(outcome, LayerRow):
            return outcome
        try:
            for lower in lowers:
                if self.meta.layer(lower) is None:
                    shared = self._layer_tasks.get(lower)
                    if shared is None:
                        raise NotFound(f"lower layer {lower} vanished while unpacking {outcome.chain}")
                    await shared.join()
            lower_dirs = [self.layer_dir(c) for c in reversed(lowers)]

            def finish() -> LayerRow:
                resolve_deferred_links(outcome.tmpdir, outcome.result.deferred_links, lower_dirs, outcome.where)
                return self.install_layer(outcome.tmpdir, outcome.chain, outcome.result, outcome.writer)

            return await _in_thread(finish)
        except BaseException:
            await _in_thread(outcome.discard)
            raise

    def _report(
        self, state: _PullState, desc: Descriptor, downloaded: int, *, done: bool, cached: bool = False
    ) -> None:
        event = PullProgress(
            ref=str(state.ref),
            layer=desc.digest,
            downloaded=downloaded,
            total=desc.size,
            done=done,
            cached=cached,
        )
        for listener in list(state.listeners):
            try:
                listener(event)
            except Exception:  # a broken progress display must not break the pull
                log.exception("progress listener failed")

    async def _download_layer(
        self, session: Any, desc: Descriptor, diff_id: str | None, chain: str, state: _PullState
    ) -> LayerRow | _Pending:
        failures = 0
        while True:
            try:
                return await self._download_layer_once(session, desc, diff_id, chain, state)
            except _Transient as exc:
                failures += 1
                if self.registry.retry.delay(failures) is None:
                    raise Unavailable(
                        f"registry {session.host.display} kept dropping layer {desc.digest} "
                        f"({failures} attempts): {exc}"
                    ) from exc
                log.info("layer %s: %s; retrying", desc.digest, exc)
                await self.registry.retry.pause(failures)

    async def _download_layer_once(
        self, session: Any, desc: Descriptor, diff_id: str | None, chain: str, state: _PullState
    ) -> LayerRow | _Pending:
        where = f"layer {desc.digest} of {state.ref}"
        tmpdir = Path(tempfile.mkdtemp(prefix="layer-", dir=self.content.tmp))  # one mkdir: not worth a thread
        os.chmod(tmpdir, 0o755)  # the layer root; a "./" entry in the tar overrides it
        if self.content.has(desc.digest):
            source = file_source(self.content.path(desc.digest))
            try:
                result = await _in_thread(
                    functools.partial(
                        unpack_layer,
                        source,
                        tmpdir,
                        where=where,
                        expected_digest=desc.digest,
                        expected_diff_id=diff_id,
                    )
                )
                self._report(state, desc, desc.size, done=True, cached=True)
                if result.deferred_links:
                    return _Pending(tmpdir, chain, result, None, where)
                return await _in_thread(functools.partial(self.install_layer, tmpdir, chain, result, None))
            except BaseException:
                await _in_thread(functools.partial(shutil.rmtree, tmpdir, True))
                raise
        writer = self.content.writer(desc.digest, desc.size)
        feed = ChunkFeed()

        def work() -> LayerRow | _Pending:
            try:
                result = unpack_layer(
                    feed,
                    tmpdir,
                    where=where,
                    blob=writer,
                    expected_digest=desc.digest,
                    expected_diff_id=diff_id,
                )
            finally:
                feed.consumer_done()
            if desc.size >= 0 and result.compressed_size != desc.size:
                raise DataLoss(f"{where}: {result.compressed_size} bytes, the manifest says {desc.size}")
            if result.deferred_links:
                return _Pending(tmpdir, chain, result, writer, where)
            return self.install_layer(tmpdir, chain, result, writer)

        thread = asyncio.ensure_future(asyncio.to_thread(work))
        downloaded = 0
        try:
            try:
                async with self.registry.open_blob(session, desc.digest) as response:
                    async for chunk in response.aiter_raw(BLOB_CHUNK):
                        if thread.done():
                            break
                        await feed.put(chunk)
                        downloaded += len(chunk)
                        state.bytes += len(chunk)
                        self.bytes_pulled_total += len(chunk)
                        state.touch()
                        self._report(state, desc, downloaded, done=False)
            except _transport_errors() as exc:
                raise _Transient(f"connection broke after {downloaded} bytes: {exc!r}") from exc
            feed.finish()
            row = await asyncio.shield(thread)  # a cancel must not orphan the thread: see below
            self._report(state, desc, downloaded, done=True)
            return row
        except BaseException:
            feed.abort()

            async def undo() -> None:
                await asyncio.wait({thread})
                if (
                    not thread.cancelled()
                    and thread.exception() is not None
                    and not isinstance(thread.exception(), ImageError)
                ):
                    log.debug("unpack thread ended with %r", thread.exception())

                def cleanup() -> None:
                    writer.abort()
                    shutil.rmtree(tmpdir, ignore_errors=True)

                await asyncio.to_thread(cleanup)

            # A sibling layer's failure cancels this one, often while it is already
            # undoing its own failure: the undo must still run to its end.
            await _complete_despite_cancel(undo())
            raise

    def install_layer(self, tmpdir: Path, chain: str, result: UnpackResult, writer: BlobWriter | None) -> LayerRow:
        """Runs in a thread: commits the blob, flushes and renames the layer into place, records it."""
        if writer is not None:
            writer.commit()
        if self.sync_layers:
            syncfs(tmpdir)
        final = self.layer_dir(chain)
        try:
            os.rename(tmpdir, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmpdir, ignore_errors=True)  # another pull installed it first
        row = LayerRow(
            chain_id=chain,
            diff_id=result.diff_id,
            blob_digest=result.digest,
            blob_size=result.compressed_size,
            size=result.size,
            inodes=result.inodes,
        )
        self.meta.add_layer(row)
        return row

    # ---- import ---------------------------------------------------------------------------


def _forget(table: dict[str, Any], key: str, shared: object, _task: object) -> None:
    """Drops a finished shared task from its table, unless a newer one took its place."""
    if table.get(key) is shared:
        del table[key]


def _parse_config(raw: bytes, manifest: Manifest, ref: Reference) -> tuple[dict[str, Any], list[str], bool]:
    """(config, diff IDs, whether the diff IDs come from the config and can be verified).

    An OCI artifact's config (often the empty `{}`, media type
    application/vnd.oci.empty.v1+json) says nothing of its layers. KEP-4639 mounts
    such artifacts when their layers are tars: they are keyed by blob digest
    instead (equal to the diff ID for an uncompressed tar), and checked against
    that digest only.
    """
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"image {ref}: the config blob is not JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise InvalidArgument(f"image {ref}: the config blob is not a JSON object")
    if "rootfs" not in config:
        return config, [d.digest for d in manifest.layers], False
    try:
        diff_ids = config["rootfs"]["diff_ids"]
    except (KeyError, TypeError) as exc:
        raise InvalidArgument(f"image {ref}: the config blob is not an OCI image config ({exc})") from exc
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument(f"image {ref}: rootfs.diff_ids must be a list of digests")
    if len(diff_ids) != len(manifest.layers):
        raise InvalidArgument(
            f"image {ref}: the manifest lists {len(manifest.layers)} layers but the config {len(diff_ids)} diff IDs"
        )
    return config, diff_ids, True


async def _in_thread(fn: Callable[[], T]) -> T:
    """asyncio.to_thread whose cancellation waits for the thread to finish first.

    A cancelled to_thread future lets its thread run on; cleanup that follows
    the cancel would then race with it (a layer renamed into place after its
    temp dir was "removed"). Waiting keeps undo steps strictly after the work.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        raise


async def _complete_despite_cancel(undo: Awaitable[None]) -> None:
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


async def _gather_or_cancel(jobs: list[Awaitable[T]]) -> list[T]:
    """Like gather, but the first failure cancels (and awaits) the rest so nothing keeps writing."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks) if tasks else None
        raise
