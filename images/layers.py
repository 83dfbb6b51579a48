"""One layer of a pull: downloaded (or re-read from its stored blob), unpacked and installed.

Layers are keyed by chain ID and shared across pulls: a second pull needing a
layer another is fetching joins that download. The scheduler (scheduler.py) bounds
parallel downloads node-wide and shares the slots fairly between pulls. The
download is read in the unpack thread (`BodySource`), so the blob
is verified and the layer extracted while the bytes arrive; nothing takes its
final name (blob or layer directory) until both digests matched. A connection
that breaks mid-layer restarts the layer, as the registry's retry policy allows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .content import BlobWriter, ContentStore
from .errors import DataLoss, ImageError, NotFound, Unavailable
from .layerstream import BodySource, ChunkSource, StreamBroken, file_source
from .manifest import Descriptor
from .metadata import LayerRow, Metadata
from .scheduler import DownloadClaim, DownloadScheduler, PullTicket
from .tasks import SharedTask, complete_despite_cancel, in_thread, shared_in
from .trees import delete_tree
from .unpack import UnpackResult, resolve_deferred_links, syncfs, unpack_layer

if TYPE_CHECKING:
    from .registry import RegistryClient

log = logging.getLogger(__name__)


class LayerProgress(Protocol):
    """What a layer download tells the pull it belongs to, and the pull's place in the queue."""

    ticket: PullTicket

    def received(self, n: int) -> None:
        """`n` more bytes arrived: the pull is not stalled."""

    def report(self, desc: Descriptor, downloaded: int, *, done: bool, cached: bool = False) -> None:
        """Progress of one layer, for the pull's listeners."""


@dataclass(frozen=True, slots=True)
class LayerJob:
    """One layer of one image: where it comes from and what it must hash to."""

    session: Any  # the registry session of the pull (registry.py)
    desc: Descriptor
    diff_id: str
    verify_diff_id: bool  # False for artifacts, whose layers are keyed by blob digest
    chain: str
    lowers: tuple[str, ...]  # chain IDs of the layers below, lowest first
    where: str  # "layer <digest> of <ref>", for messages


@dataclass(slots=True)
class _Pending:
    """A verified layer not yet installed: a download's, installed outside the download bound,
    or one whose hardlinks into lower layers wait for those layers."""

    tmpdir: Path
    result: UnpackResult
    writer: BlobWriter | None

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


class _Transient(Exception):
    """A layer download broke mid-stream; the layer is retried from the start."""


@dataclass(frozen=True, slots=True)
class StoreAccess:
    """What pulls use of the image store (store.py owns the layout and the clients)."""

    content: ContentStore
    meta: Metadata
    layer_dir: Callable[[str], Path]  # where the layer of a chain ID lives
    registry: Callable[[], RegistryClient]  # made on first use
    remove_tree: Callable[[Path], None]


class LayerFetcher:
    """Gets layers into the layer directory for the Puller, and installs imported ones."""

    def __init__(self, store: StoreAccess, *, max_parallel: int, sync_layers: bool) -> None:
        self.content = store.content
        self.meta = store.meta
        self.layer_dir = store.layer_dir
        self._registry = store.registry
        self.sync_layers = sync_layers
        self.scheduler = DownloadScheduler(max_parallel)
        self._tasks: dict[str, SharedTask[LayerRow]] = {}
        self._claims: dict[str, DownloadClaim] = {}  # chain ID -> the pulls a queued download serves
        self.bytes_downloaded_total = 0  # for the metrics exporter

    def running(self, chain_id: str) -> bool:
        """True while the layer is being fetched."""
        return chain_id in self._tasks

    def running_task(self, chain_id: str) -> asyncio.Task[LayerRow] | None:
        shared = self._tasks.get(chain_id)
        return shared.task if shared is not None else None

    def new_tmpdir(self) -> Path:
        """An empty directory to unpack a layer into, on the store's disk."""
        tmpdir = Path(tempfile.mkdtemp(prefix="layer-", dir=self.content.tmp))  # one mkdir: not worth a thread
        os.chmod(tmpdir, 0o755)  # the layer root; a "./" entry in the tar overrides it
        return tmpdir

    async def get(self, job: LayerJob, progress: LayerProgress) -> LayerRow:
        """The layer if already unpacked, else a (shared) fetch of it."""
        existing = self.meta.layer(job.chain)
        if existing is not None and self.layer_dir(job.chain).is_dir():
            progress.report(job.desc, job.desc.size, done=True, cached=True)
            return existing
        claim = self._claims.get(job.chain)
        if claim is not None:
            claim.join(progress.ticket)  # served at the best priority of the pulls waiting for it
        shared = shared_in(self._tasks, job.chain, lambda: self._start(job, progress))
        return await shared.join()

    def _start(self, job: LayerJob, progress: LayerProgress) -> asyncio.Task[LayerRow]:
        claim = self._claims[job.chain] = DownloadClaim([progress.ticket])
        return asyncio.create_task(self._fetch(job, progress, claim), name=f"layer {job.chain}")

    async def _fetch(self, job: LayerJob, progress: LayerProgress, claim: DownloadClaim) -> LayerRow:
        """Downloads within the node-wide bound, then installs outside it; a layer that hardlinks
        into lower layers first waits (outside the bound, so no deadlock) for those and copies
        the targets up."""
        try:
            await self.scheduler.acquire(claim)
        finally:
            if self._claims.get(job.chain) is claim:  # once it runs, pulls joining it change nothing
                del self._claims[job.chain]
        try:
            outcome = await self._download(job, progress)
        finally:
            self.scheduler.release()
        if isinstance(outcome, LayerRow):
            return outcome
        # The install (the blob's fsync, the rename, the database row) runs outside the download
        # bound: the next layer's bytes start to flow while this one waits on the disk.
        try:
            links = outcome.result.deferred_links
            if links:
                for lower in job.lowers:
                    if self.meta.layer(lower) is None:
                        shared = self._tasks.get(lower)
                        if shared is None:
                            raise NotFound(f"lower layer {lower} vanished while unpacking {job.chain}")
                        await shared.join()
            lower_dirs = [self.layer_dir(c) for c in reversed(job.lowers)] if links else []

            def finish() -> LayerRow:
                if links:
                    resolve_deferred_links(outcome.tmpdir, links, lower_dirs, job.where)
                return self.install_layer(outcome.tmpdir, job.chain, outcome.result, outcome.writer)

            return await in_thread(finish)
        except BaseException:
            await in_thread(outcome.discard)
            raise

    async def _download(self, job: LayerJob, progress: LayerProgress) -> LayerRow | _Pending:
        registry = self._registry()
        failures = 0
        while True:
            try:
                if self.content.has(job.desc.digest):
                    return await self._unpack_stored(job, progress)
                return await self._download_once(registry, job, progress)
            except _Transient as exc:
                failures += 1
                if registry.retry.delay(failures) is None:
                    raise Unavailable(
                        f"registry {job.session.host.display} kept dropping layer {job.desc.digest} "
                        f"({failures} attempts): {exc}"
                    ) from exc
                log.info("layer %s: %s; retrying", job.desc.digest, exc)
                await registry.retry.pause(failures)

    def _unpack(
        self,
        job: LayerJob,
        tmpdir: Path,
        source: ChunkSource,
        blob: BlobWriter | None,
        stopped: Callable[[], bool],
    ) -> UnpackResult:
        return unpack_layer(
            source,
            tmpdir,
            where=job.where,
            blob=blob,
            expected_digest=job.desc.digest,
            expected_diff_id=job.diff_id if job.verify_diff_id else None,
            stopped=stopped,
        )

    async def _unpack_stored(self, job: LayerJob, progress: LayerProgress) -> LayerRow | _Pending:
        """The blob is in the content store already (another image, an earlier pull): unpack it."""
        tmpdir = self.new_tmpdir()
        stop = threading.Event()
        source = file_source(self.content.path(job.desc.digest), stop)
        try:
            result = await in_thread(functools.partial(self._unpack, job, tmpdir, source, None, stop.is_set), stop)
            progress.report(job.desc, job.desc.size, done=True, cached=True)
            if result.deferred_links:
                return _Pending(tmpdir, result, None)
            return await in_thread(functools.partial(self.install_layer, tmpdir, job.chain, result, None))
        except BaseException:
            await in_thread(functools.partial(delete_tree, tmpdir))
            raise

    async def _download_once(self, registry: RegistryClient, job: LayerJob, progress: LayerProgress) -> _Pending:
        """Reads the blob in the unpack thread, which hashes and extracts it as it arrives;
        a broken connection is _Transient. The verified layer is left for _fetch to install."""
        downloaded = 0

        def on_bytes(n: int) -> None:  # on the loop, once a MiB or so
            nonlocal downloaded
            downloaded += n
            self.bytes_downloaded_total += n
            progress.received(n)
            progress.report(job.desc, downloaded, done=False)

        async with registry.open_blob_body(job.session, job.desc.digest) as response:
            tmpdir = self.new_tmpdir()
            writer = self.content.writer(job.desc.digest, job.desc.size)
            source = BodySource(response, on_bytes)

            def work() -> _Pending:
                try:
                    result = self._unpack(job, tmpdir, source, writer, source.stopped)
                except StreamBroken as exc:
                    raise _Transient(f"connection broke after {source.received} bytes: {exc}") from exc
                if job.desc.size >= 0 and result.compressed_size != job.desc.size:
                    raise DataLoss(f"{job.where}: {result.compressed_size} bytes, the manifest says {job.desc.size}")
                return _Pending(tmpdir, result, writer)  # installed by _fetch, outside the download bound

            thread = asyncio.ensure_future(asyncio.to_thread(work))
            try:
                row = await asyncio.shield(thread)  # a cancel must not orphan the thread: see below
            except BaseException:
                source.interrupt()
                # A sibling layer's failure cancels this one, often while it is already
                # undoing its own failure: the undo must still run to its end.
                await complete_despite_cancel(_undo_download(thread, writer, tmpdir))
                raise
            progress.report(job.desc, downloaded, done=True)
            return row

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


async def _undo_download(thread: asyncio.Future[Any], writer: BlobWriter, tmpdir: Path) -> None:
    """After a failed or cancelled download: the unpack thread ends first, then its files go."""
    await asyncio.wait({thread})
    if not thread.cancelled() and thread.exception() is not None and not isinstance(thread.exception(), ImageError):
        log.debug("unpack thread ended with %r", thread.exception())

    def cleanup() -> None:
        writer.abort()
        delete_tree(tmpdir)

    await asyncio.to_thread(cleanup)
