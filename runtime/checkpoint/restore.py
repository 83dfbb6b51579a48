"""Restore into a new pod, its first half: CreateContainer whose image is a checkpoint archive.

    absolute path? -> archive there? (NOT_FOUND)     | a stored checkpoint image? -> its unpacked layer
      -> unpack and check (INVALID_ARGUMENT)          | -> link its files and check (INVALID_ARGUMENT)
      -> taken on this architecture, by a CRIU no newer? (provenance.py: FAILED_PRECONDITION)
      -> base image in the store? (FAILED_PRECONDITION) -> handler can? -> CRIU can?
      -> [create.py: the base image's overlay, rootfs-diff.tar applied, deleted.files removed,
          CRIU's images into the bundle, the spec built for the NEW pod; no process]

As CRI-O does, `config.image.image` naming a file (an absolute path: no image
reference starts with '/') means a checkpoint archive. So does an image reference
naming a stored image whose manifest carries CRI-O's or containerd's checkpoint
annotation (images/checkpoint_image.py): its one layer is the archive, which the
pull has unpacked; its files are hard-linked into the staging directory
(archive.link_layer), under a lease so a RemoveImage meanwhile cannot delete
them, and are never unpacked a second time. The container is made
for the pod the request names, with a new ID: its spec comes from this
request, so its namespaces, cgroup and mounts are the new pod's; only what the
request leaves out (command, environment, working directory) is taken from the
archive's spec.dump. It is CREATED with `restore_pending` and no process;
StartContainer restores it (restore_start.py). Each check comes before the
container's directory exists, and the staging directory the archive is
unpacked into goes whatever happens, so a refusal leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crishim.cri_api import api_pb2
from crishim.images import errors as image_errors
from crishim.images.checkpoint_image import checkpoint_name
from crishim.images.store import CHECKPOINT_READ_PREFIX
from crishim.runtime.checkpoint import archive, late_pages, memstage, provenance, safe_tar
from crishim.runtime.checkpoint.availability import require_criu
from crishim.runtime.checkpoint.kernel_copy import KernelCopyTar
from crishim.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, RuntimeError_
from crishim.runtime.services import Handler, Services

log = logging.getLogger("crishim.checkpoint")

FIELD = "config.image.image"
# runc hands CRIU the configuration file this spec annotation names; its settings override runc's own.
CRIU_CONFIG_ANNOTATION = "org.criu.config"
CRIU_CONFIG_FILE = "criu-restore.conf"
# runc moves CRIU into the new container's cgroup before the restore, so restored tasks are born
# there, but CRIU (soft mode, the only one runc 1.1 offers) then moves them into the cgroup they
# were dumped from: the original container's, which a checkpoint left running keeps. The new
# container's scope is left empty and removed, its stats are gone, and stopping the original
# kills it. Ignoring cgroups leaves the tasks where runc put them.
CRIU_RESTORE_SETTINGS = "manage-cgroups=ignore\n"
STAGE_PREFIX = ".restore-"
# config.dump's names of the base image, most exact first: its ID, then the names it was pulled by.
BASE_IMAGE_KEYS = ("rootfsImageRef", "rootfsImageName", "rootfsImage")


@dataclass(frozen=True, slots=True)
class RestoreSource:
    """A checked archive, unpacked into a staging directory."""

    archive_path: str  # the archive's path, or the checkpoint image's reference: what messages name
    unpacked: archive.Unpacked
    # The archive file the large page images stay in, and the tools of the hook that waits for
    # their copy (late_pages.py); None when everything was unpacked.
    archive_file: Path | None = None
    late_tools: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class CheckpointImage:
    """A stored image whose manifest marks it a checkpoint: its one layer is the archive, unpacked."""

    ref: str
    image_id: str
    image_set: str
    layer: Path


def names_archive(image: str) -> bool:
    return image.startswith("/")


def checkpoint_image(svc: Services, sandbox_id: str, image: str) -> CheckpointImage | None:
    """The checkpoint image `image` names in the pod's image set; None for any other image, or
    when the pod or image is not found (the ordinary create path then says so)."""
    try:
        handler = svc.handler(svc.state.sandboxes.get(sandbox_id).meta.runtime_handler)
        image_set = svc.images.image_set(handler.name)
        record = svc.images.resolve(image, image_set)
    except (RuntimeError_, image_errors.ImageError, ValueError):
        return None
    if checkpoint_name(record.annotations) is None:
        return None
    layers = svc.images.layer_paths(record.id)
    if len(layers) != 1:
        raise InvalidArgument(
            f"{FIELD}: checkpoint image {image!r} has {len(layers)} layers; a checkpoint image has one, "
            "the archive (build it with `crishim images checkpoint-image`)"
        )
    return CheckpointImage(image, record.id, image_set, layers[0])


async def restore_source(
    svc: Services, config: api_pb2.ContainerConfig, container_id: str, image: CheckpointImage | None = None
) -> RestoreSource:
    """The archive `config.image.image` names, unpacked, or `image`'s layer, linked; checked. `discard` it when done."""
    if image is None:
        path, name = Path(config.image.image), config.image.image
        if not await asyncio.to_thread(path.is_file):
            raise NotFound(f"{FIELD}: checkpoint archive {str(path)!r} does not exist (or is not a file)")
    else:
        path, name = image.layer, image.ref
        svc.images.acquire(image.image_id, CHECKPOINT_READ_PREFIX + container_id, image.image_set)
    stage = svc.container_dir(container_id).parent / f"{STAGE_PREFIX}{container_id}"
    abort = threading.Event()  # a cancelled call stops the unpacking thread
    try:
        await asyncio.to_thread(stage.mkdir, mode=0o700, parents=True)
        if image is None:
            unpacked, tools = await asyncio.to_thread(_unpack_archive, path, stage, abort)
        else:
            unpacked, tools = await asyncio.to_thread(_link_layer, path, stage, abort), None
    except BaseException as exc:
        abort.set()
        await asyncio.to_thread(_remove_stage, stage)
        if isinstance(exc, archive.CorruptArchive):
            raise InvalidArgument(f"{FIELD}: {name!r} is not a usable checkpoint archive: {exc}") from None
        raise
    finally:
        if image is not None:  # linked (or refused): the layer is no longer read
            await svc.images.arelease(CHECKPOINT_READ_PREFIX + container_id)
    return RestoreSource(name, unpacked, path if unpacked.late else None, tools)


def _unpack_archive(path: Path, stage: Path, abort: threading.Event) -> tuple[archive.Unpacked, tuple[str, str] | None]:
    """Blocking: the archive unpacked, onto a tmpfs where it fits (memstage.py), its large page images
    left for the copy behind CreateContainer (late_pages.py) where that can be done; the hook's tools."""
    plain = archive.is_plain_tar(path)  # only then is its size its contents', and its offsets the file's
    if plain:
        memstage.stage_restore_in_memory(stage, path.stat().st_size)
    tools = late_pages.tools() if plain else None
    return archive.unpack_archive(path, stage, abort, late_pages.is_late if tools else None), tools


def _link_layer(layer: Path, stage: Path, abort: threading.Event) -> archive.Unpacked:
    """Blocking: archive.link_layer, once the layer is known to be on the disk."""
    if not layer.is_dir():
        raise NotFound(f"{FIELD}: the layer of the checkpoint image is missing from the store: pull the image again")
    return archive.link_layer(layer, stage, abort)


def _remove_stage(stage: Path, keep: Path | None = None) -> None:
    memstage.release_stage(stage, keep)
    shutil.rmtree(stage, True)


async def discard(source: RestoreSource) -> None:
    """Removes the staging directory (the CRIU images have moved into the bundle, or are not needed)."""
    root = source.unpacked.root
    await asyncio.to_thread(_remove_stage, root, root / archive.CHECKPOINT_DIRECTORY)


def restored_config(config: api_pb2.ContainerConfig, base_image: str, spec: dict[str, Any]) -> api_pb2.ContainerConfig:
    """The request with the base image; command, env and working directory from the dumped spec if unset.

    CRIU restores the process itself; these matter to what the container reports and to
    the processes exec starts in it, which should see the environment it was checkpointed with.
    """
    restored = api_pb2.ContainerConfig()
    restored.CopyFrom(config)
    restored.image.image = base_image
    process = spec.get("process") or {}
    args = [str(a) for a in process.get("args") or []]
    if not restored.command and not restored.args and args:
        restored.command.extend(args)
    if not restored.envs:
        for entry in process.get("env") or []:
            key, _, value = str(entry).partition("=")
            restored.envs.add(key=key, value=value.encode())
    if not restored.working_dir and process.get("cwd"):
        restored.working_dir = str(process["cwd"])
    return restored


def base_image(svc: Services, source: RestoreSource, image_set: str) -> str:
    """The base image, as config.dump names it, which must be in the store: the archive holds
    only the changes to it. Found by its ID first; returned by the name it was pulled by when
    that name still means the same image, so the restored container reports a name, not an ID."""
    config = source.unpacked.config
    names = [name for name in (config.get(key) for key in BASE_IMAGE_KEYS) if isinstance(name, str) and name]
    if not names:
        raise InvalidArgument(f"{FIELD}: the checkpoint's {archive.CONFIG_DUMP} names no base image")
    for name in names:
        with contextlib.suppress(image_errors.ImageError, ValueError):
            found = svc.images.resolve(name, image_set)
            return _same_image_name(svc, config, found.id, image_set) or name
    name = config.get("rootfsImageName") or names[0]
    raise FailedPrecondition(
        f"the base image {name!r} of checkpoint {source.archive_path!r} is not in the image store: "
        f"pull it first (crictl pull {name})"
    )


def _same_image_name(svc: Services, config: dict[str, Any], image_id: str, image_set: str) -> str | None:
    for key in ("rootfsImage", "rootfsImageName"):  # as the user named it, then as pulled
        name = config.get(key)
        if isinstance(name, str) and name and not name.startswith("sha256:"):
            with contextlib.suppress(image_errors.ImageError, ValueError):
                if svc.images.resolve(name, image_set).id == image_id:
                    return name
    return None


async def check_provenance(source: RestoreSource) -> None:
    """Refuses an archive from another architecture or a newer CRIU or format (provenance.py)."""
    node = await provenance.this_node()
    provenance.check_restorable(source.unpacked.config, node, source.archive_path)


async def check_can_restore(handler: Handler) -> None:
    """The pod's handler must restore through CRIU, and CRIU must work on this kernel."""
    await require_criu(handler.runtime, handler.name, "restore a checkpoint", "restore from a checkpoint")


def criu_annotations(bundle: Path) -> dict[str, str]:
    """The spec annotation pointing runc's CRIU at the restore's settings (written by apply_to_bundle)."""
    return {CRIU_CONFIG_ANNOTATION: str(bundle / CRIU_CONFIG_FILE)}


def apply_to_bundle(source: RestoreSource, rootfs: Path, bundle: Path, log_path: Path) -> None:
    """Blocking: the writable layer's changes onto the mounted rootfs, CRIU's images into the bundle,
    and the checkpointed log at the new log path, so the restored process's log continues it."""
    root = source.unpacked.root
    diff = root / archive.ROOTFS_DIFF
    if diff.is_file():
        try:
            with KernelCopyTar.open(diff, "r:") as tar:
                archive.with_copy_buffer(tar)
                for member in tar:  # no member leads out of the rootfs (checked against the mounted tree)
                    safe_tar.extract(tar, member, rootfs, strict=False)
        except (tarfile.TarError, OSError) as exc:
            raise InvalidArgument(f"{FIELD}: {archive.ROOTFS_DIFF} of {source.archive_path!r} "
                                  f"cannot be applied: {exc}") from None  # fmt: skip
    for path in source.unpacked.deleted:
        _remove_inside(rootfs, path)
    if memstage.in_memory(root):
        memstage.move_images(root / archive.CHECKPOINT_DIRECTORY, bundle / archive.CHECKPOINT_DIRECTORY)
    else:
        os.rename(root / archive.CHECKPOINT_DIRECTORY, bundle / archive.CHECKPOINT_DIRECTORY)
    (bundle / CRIU_CONFIG_FILE).write_text(CRIU_RESTORE_SETTINGS)
    old_log = root / archive.CONTAINER_LOG
    if old_log.is_file() and not log_path.exists():
        log_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(old_log, log_path)


def with_late_hook(source: RestoreSource, bundle: Path) -> Callable[[dict[str, Any]], None] | None:
    """The spec edit holding CRIU until the late page images are copied; None when none are late."""
    tools = source.late_tools
    if not source.unpacked.late or tools is None:
        return None
    return lambda spec: late_pages.with_hook(spec, bundle, tools)


def start_late_copy(source: RestoreSource, bundle: Path) -> bool:
    """Blocking: the copy of the late page images into the bundle started (late_pages.py); False when none are late."""
    if not source.unpacked.late or source.archive_file is None:
        return False
    late_pages.start(source.archive_file, source.unpacked.late, bundle / archive.CHECKPOINT_DIRECTORY, bundle)
    return True


def _remove_inside(rootfs: Path, path: str) -> None:
    """Removes `path` of the container, never following a symlink out of its rootfs."""
    target = rootfs / path.lstrip("/")
    real_root = os.path.realpath(rootfs)
    parent = os.path.realpath(target.parent)
    if os.path.commonpath([real_root, parent]) != real_root:
        log.warning("deleted file %s of the checkpoint leads out of the rootfs; left alone", path)
        return
    target = Path(parent) / target.name
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
