"""ImageStore: the facade runtime/ uses to pull, resolve, list and remove images.

Container root filesystems are mounted by runtime/rootfs.py from `layer_paths`;
image volumes by volumes.py.

Layout under `root` (the `image_store` setting, possibly its own disk):
  images.db            metadata (metadata.py)
  blobs/sha256/<hex>   configs and compressed layers (content.py)
  layers/<chain hex>/  unpacked layers, used as overlay lowerdirs
  tmp/                 downloads and unpacks in progress; cleared at start

Durability: blobs are fsynced before they get their final name; unpacked
layers are not synced file by file (as containerd does): `sync_layers=True`
adds one syncfs(2) per layer before it is renamed into place, which costs
about 2x pull time on a plain disk (scripts/bench-pull --sync).

Image sets (KEP-4216): every lookup, pull, pin and removal happens in one image
set: '' is shared by all runtime handlers; a handler configured with
`separate_images` gets its own set (named after it), given by `image_sets`,
a handler -> set map the daemon builds from its config. Layers and blobs are
shared by every set, so only names, existence and removal are per set.

Pulls (pull.py, layers.py) share work between callers and never race garbage
collection: the store asks the Puller whether a layer is in use before deleting it.
"""

from __future__ import annotations

import asyncio
import builtins
import fcntl
import functools
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crishim.oci.mounttable import is_mount_point

from .content import ContentStore
from .errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from .layers import StoreAccess
from .manifest import Credentials
from .metadata import SHARED_SET, Garbage, ImageRow, Metadata
from .platforms import Platform, host_platform
from .policy import PolicySet
from .pull import Puller
from .records import ImageRecord, ProgressFn
from .reference import looks_like_image_id, parse_reference
from .scheduler import Priority
from .tasks import in_thread
from .trees import delete_tree
from .trust import VerdictFn
from .usage import tree_usage

if TYPE_CHECKING:
    from .prefetch import Prefetcher
    from .registry import RegistryClient

log = logging.getLogger(__name__)

VOLUME_HOLDER_PREFIX = "image-volume:"  # + the mount point; see volumes.py
# + the container ID: a checkpoint image whose layer a restore is reading (runtime/checkpoint/restore.py).
CHECKPOINT_READ_PREFIX = "checkpoint-read:"
_HEX_PREFIX = re.compile(r"^(?:sha256:)?([0-9a-f]{3,64})$")


class ImageStore:
    def __init__(
        self,
        root: Path,
        registries_config_dir: Path | None,
        *,
        max_parallel_layers: int = 3,
        pull_progress_timeout: float = 300.0,
        sync_layers: bool = False,
        registry: RegistryClient | None = None,
        image_sets: Mapping[str, str] | None = None,
        policies: PolicySet | None = None,
        priority_namespaces: Iterable[str] = ("kube-system",),
    ) -> None:
        self.root = root
        self.image_sets = dict(image_sets) if image_sets is not None else None
        root.mkdir(parents=True, exist_ok=True)
        self.content = ContentStore(root)
        self.layers_dir = root / "layers"
        self.layers_dir.mkdir(exist_ok=True)
        self.meta = Metadata(root / "images.db")
        self._registry = registry
        self._registries_config_dir = registries_config_dir
        self.puller = Puller(
            StoreAccess(self.content, self.meta, self.layer_dir, lambda: self.registry, self._remove_tree),
            max_parallel_layers=max_parallel_layers,
            pull_progress_timeout=pull_progress_timeout,
            sync_layers=sync_layers,
            policies=policies,
            priority_namespaces=priority_namespaces,
        )
        self._prefetch_task: asyncio.Task[None] | None = None
        self._lock_fd = _open_shared(root / "store.lock", self._recover)

    def close(self) -> None:
        """Synchronous shutdown for callers without a loop at hand: cancels pulls, closes the database."""
        if self._prefetch_task is not None:
            self._prefetch_task.cancel()
        self.puller.cancel_all()
        self.meta.close()
        os.close(self._lock_fd)

    async def aclose(self) -> None:
        if self._prefetch_task is not None:
            self._prefetch_task.cancel()
            await asyncio.gather(self._prefetch_task, return_exceptions=True)
        await asyncio.gather(*self.puller.cancel_all(), return_exceptions=True)
        if self._registry is not None:
            await self._registry.aclose()
        self.meta.close()
        os.close(self._lock_fd)

    @property
    def registry(self) -> RegistryClient:
        """The registry client, made on first pull: httpx and TLS stay out of an idle daemon."""
        if self._registry is None:
            from .registry import RegistryClient

            self._registry = RegistryClient(self._registries_config_dir)
        return self._registry

    @property
    def platform(self) -> Platform:
        """The platform an image index is read for: the registry client's once it exists,
        this machine's before, so an archive import (the pause image at a first start)
        does not load the HTTP client."""
        if self._registry is not None:
            return self._registry.platform
        return host_platform()

    def _recover(self) -> None:
        """After a crash: drop temp files and layer directories the database does not know.
        Only run by the store's only user: see `_open_shared`."""
        self.content.sweep()
        known = {layer.chain_id.split(":", 1)[1] for layer in self.meta.all_layers()}
        for entry in self.layers_dir.iterdir():
            if entry.name not in known:
                log.info("removing unrecorded layer directory %s", entry)
                self._remove_tree(entry)
        for layer in self.meta.all_layers():
            if not self.layer_dir(layer.chain_id).is_dir():
                log.warning("layer %s is recorded but missing on disk; pull its images again", layer.chain_id)
        self.sweep_volume_leases()
        for holder in self.meta.lease_holders(CHECKPOINT_READ_PREFIX):  # a read a crash cut short
            self.release(holder)

    def sweep_volume_leases(self) -> None:
        """Drops image-volume leases whose mount is gone (a crash between unmount and release,
        a container directory swept as an orphan, a reboot), so their images can be removed."""
        for holder in self.meta.lease_holders(VOLUME_HOLDER_PREFIX):
            if not is_mount_point(Path(holder.removeprefix(VOLUME_HOLDER_PREFIX))):
                log.info("releasing stale image volume lease %s", holder)
                self.release(holder)

    # ---- pulls (pull.py does the work) ----------------------------------------------------

    async def pull(
        self,
        ref: str,
        credentials: Credentials | None = None,
        progress: ProgressFn | None = None,
        image_set: str = "",
        *,
        namespace: str = "",
        on_verdict: VerdictFn | None = None,
        annotations: Mapping[str, str] | None = None,
        priority: Priority | None = None,
    ) -> ImageRecord:
        """Puller.pull: `ref` into `image_set` ('' is the shared set), joining a pull of it already
        running, checked against the policy of pod namespace `namespace` (if any); the namespace
        and the sandbox's `annotations` set its download priority unless `priority` does."""
        return await self.puller.pull(
            ref, credentials, progress, image_set, namespace, on_verdict, annotations, priority
        )

    def start_prefetch(
        self, refs: Sequence[str], refresh_interval: float, keep_pinned: Iterable[str] = ()
    ) -> Prefetcher:
        """Records the configured pre-fetch list and keeps it pulled and pinned in a background
        task (prefetch.py) that `aclose` cancels; returns at once."""
        from .prefetch import CONFIG_SOURCE, Prefetcher

        prefetcher = Prefetcher(self, refresh_interval, keep_pinned)
        prefetcher.adopt(CONFIG_SOURCE, refs, replace=True)
        self._prefetch_task = asyncio.create_task(prefetcher.run(), name="prefetch")
        return prefetcher

    @property
    def verdict_counts(self) -> dict[str, int]:
        """Pulls by policy verdict: verified, rejected, unsigned (accepted without a signature)."""
        return dict(self.puller.verifier.counts)

    @property
    def pull_progress_timeout(self) -> float:
        return self.puller.pull_progress_timeout

    @pull_progress_timeout.setter
    def pull_progress_timeout(self, seconds: float) -> None:
        self.puller.pull_progress_timeout = seconds

    @property
    def bytes_pulled_total(self) -> int:
        return self.puller.bytes_pulled_total

    # ---- image sets -----------------------------------------------------------------------

    def image_set(self, handler: str) -> str:
        """The image set serving runtime handler `handler` ('' = the default handler).

        Without a handler map (tools, tests) every handler shares one set; with one, a
        handler it does not know is refused rather than silently given the shared set.
        """
        if self.image_sets is None:
            return SHARED_SET
        found = self.image_sets.get(handler)
        if found is None:
            known = ", ".join(sorted(h for h in self.image_sets if h))
            raise InvalidArgument(
                f"runtime handler {handler!r} is not configured (configured: {known}); "
                "ImageSpec.runtime_handler must name one of them or be empty"
            )
        return found

    # ---- paths ----------------------------------------------------------------------------

    def layer_dir(self, chain_id: str) -> Path:
        return self.layers_dir / chain_id.split(":", 1)[1]

    def layer_paths(self, image_id: str) -> list[Path]:
        """The unpacked layer directories of an image, lowest first (overlay wants them reversed)."""
        return [self.layer_dir(c) for c in self._row(image_id).layers]

    def config(self, image_id: str) -> dict[str, Any]:
        """The OCI image config JSON (Env, Entrypoint, Cmd, User, WorkingDir... under "config")."""
        return self._row(image_id).config

    def _row(self, image_id: str) -> ImageRow:
        row = self.meta.image(image_id, None, include_removed=True)
        if row is None:
            raise NotFound(f"image {image_id} is not in the store")
        return row

    # ---- lookups --------------------------------------------------------------------------

    def resolve(self, ref_or_id: str, image_set: str = SHARED_SET) -> ImageRecord:
        """By full ID, tag, digest reference or unique ID prefix, in `image_set`; NotFound says to pull."""
        text = ref_or_id.strip()
        where = f" for runtime handler {image_set!r}" if image_set else ""
        if not text:
            raise InvalidArgument("empty image reference")
        if looks_like_image_id(text):
            image_id = text if text.startswith("sha256:") else "sha256:" + text
            row = self.meta.image(image_id, image_set)
            if row is None:
                raise NotFound(f"image {image_id} is not in the store{where}: pull it first")
            return row.record()
        parse_error: InvalidArgument | None = None
        try:
            ref = parse_reference(text)
        except InvalidArgument as exc:
            parse_error = exc
        else:
            named = self.meta.image_by_name(ref.repo_digest(ref.digest) if ref.digest else str(ref), image_set)
            if named is not None:
                found = self.meta.image(named, image_set)
                if found is not None:
                    return found.record()
        match = _HEX_PREFIX.match(text)
        if match:
            ids = self.meta.image_ids_with_prefix("sha256:" + match.group(1), image_set)
            if len(ids) > 1:
                raise InvalidArgument(f"image ID prefix {text!r} is ambiguous: it matches {len(ids)} images")
            if ids:
                found = self.meta.image(ids[0], image_set)
                if found is not None:
                    return found.record()
        if parse_error is not None:
            raise parse_error
        raise NotFound(f"image {text!r} is not in the store{where}: pull it first (e.g. crictl pull {text})")

    def list(self, image_set: str | None = SHARED_SET) -> builtins.list[ImageRecord]:
        """The images of one set, or of every set with None (an image in two sets is listed twice)."""
        return [row.record() for row in self.meta.images(image_set)]

    def set_pinned(self, ref_or_id: str, pinned: bool, image_set: str = SHARED_SET) -> ImageRecord:
        record = self.resolve(ref_or_id, image_set)
        self.meta.set_pinned(record.id, pinned, image_set)
        return self.resolve(record.id, image_set)

    async def remove(self, ref_or_id: str, image_set: str = SHARED_SET) -> None:
        """Removes the image and every name it has from `image_set`; absent is fine; pinned is
        FailedPrecondition. Its layers go only when no image of any set and no lease uses them.

        containerd and CRI-O remove a pinned image when RemoveImage names it (pinning only
        keeps the kubelet's garbage collection away); we refuse, so that a pre-fetched or
        pause image stays until its pin is withdrawn where it was made."""
        try:
            record = self.resolve(ref_or_id, image_set)
        except NotFound:
            return
        if record.pinned:
            raise FailedPrecondition(
                f"image {record.id} ({', '.join(record.repo_tags) or 'untagged'}) is pinned: "
                "the runtime keeps it (the pause image, or one listed for pre-fetch: drop it from "
                "[images] prefetch or from the list given to `crishim images prefetch --replace`)"
            )
        garbage = await in_thread(functools.partial(self.meta.remove_image, record.id, image_set))
        await in_thread(functools.partial(self._collect, garbage))
        log.info("removed image %s (%s)", record.id, ", ".join(record.repo_tags))

    def acquire(self, image_id: str, holder: str, image_set: str = SHARED_SET) -> None:
        """Marks the image (of `image_set`) in use by `holder` (a container or image volume):
        RemoveImage then only drops its names, and its layers stay on disk until release."""
        if not self.meta.acquire(image_id, holder, image_set):
            raise NotFound(f"image {image_id} is not in the store")

    def release(self, holder: str) -> None:
        """Drops `holder`'s lease; an image removed meanwhile is deleted when its last lease goes."""
        self._collect(self.meta.release(holder))

    async def arelease(self, holder: str) -> None:
        """`release` for the event loop: the layers it may free (GBs) are deleted in a thread."""
        garbage = self.meta.release(holder)
        if garbage.layers or garbage.blobs:
            await in_thread(functools.partial(self._collect, garbage))

    def fs_usage(self) -> tuple[int, int]:
        """(bytes, inodes) used by the image store; walks the tree, so call it from a thread."""
        return tree_usage(self.root)

    # ---- garbage --------------------------------------------------------------------------

    def _remove_tree(self, path: Path) -> None:
        """Renames first so a crash never leaves a half-deleted layer under its final name;
        then deletes it out of process (trees.py), in the caller's thread."""
        doomed = Path(tempfile.mkdtemp(prefix="del-", dir=self.content.tmp))
        try:
            os.rename(path, doomed / "tree")
        except FileNotFoundError:
            pass
        delete_tree(doomed)

    def _collect(self, garbage: Garbage) -> None:
        for layer in garbage.layers:
            if self.puller.in_use(layer.chain_id):
                continue
            self._remove_tree(self.layer_dir(layer.chain_id))
        for digest in garbage.blobs:
            self.content.delete(digest)

    async def import_archive(self, path: Path) -> builtins.list[ImageRecord]:
        """Loads an OCI image layout (directory or tar) or a `docker save` tar; returns what it stored."""
        from .archive import import_archive

        return await import_archive(self, path)


def _open_shared(lock_file: Path, recover: Callable[[], None]) -> int:
    """Holds a shared flock on `lock_file` while the store is open; returns its descriptor.

    The daemon and `crishim pull` / `crishim images prefetch` may use one store at once.
    Recovery deletes temp files and unrecorded layer directories, which are another user's
    work in progress, so it runs only when an exclusive lock shows nobody else has the store.
    """
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("image store %s is in use by another process: crash recovery left to it", lock_file.parent)
    else:
        try:
            recover()
        except BaseException:
            os.close(fd)
            raise
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd
