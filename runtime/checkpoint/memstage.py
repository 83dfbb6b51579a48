"""CRIU's images staged in memory (a tmpfs) when the node has the memory to spare.

A checkpoint's images are the container's memory, written by CRIU and then copied once
into the archive, which is the only copy that has to reach the disk. Staged on the
node's disk they are written there twice (CRIU's images, then the archive), which on a
slow disk is most of a checkpoint's time. So the stage's image directory is a tmpfs of
its own, sized to what the node can spare, when the container's processes fit well within
it; a container too large for that stages on the disk as before. The tmpfs is unmounted
(its memory freed) once the archive is written, by the failure paths, and by the start-up
sweep of stages a killed daemon left (`stage.clean_stage`).

A restore reads the archive once and CRIU reads the images once: unpacked onto the disk,
they would be written there too. So a plain (uncompressed) archive that fits the same
margin is unpacked onto a tmpfs mounted on the restore's stage; its image directory is
then bound into the container's bundle (`move_images`), where StartContainer's CRIU reads
it, and unmounted once the process is restored, or with the container's files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from crishim.oci import mounttable
from crishim.oci.processes import descendants
from crishim.runtime.checkpoint.archive import empty_directory
from crishim.runtime.mounts import mount_tmpfs, unmount

log = logging.getLogger("crishim.checkpoint")

TMPFS_SOURCE = "crishim-checkpoint"
# The tmpfs may use at most this share of the node's available memory...
TMPFS_SHARE = 2
# ...and is used only when the container's resident memory is at most this share of it:
# CRIU's images are about the resident memory, and the node keeps a wide margin.
RESIDENT_SHARE = 4
_HEADROOM = 64 << 20  # CRIU's own image files beside the pages
# Where a restored container's bundle holds CRIU's images (archive.CHECKPOINT_DIRECTORY, named
# here too so that removing a container need not load the archive code).
BUNDLE_IMAGES = "checkpoint"


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The node's MemAvailable in bytes (0 when unknown: then nothing is staged in memory)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def resident_bytes(pid: int) -> int:
    """The resident memory of `pid` and every process below it: what CRIU dumps, about."""
    total = 0
    for member in descendants(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def tmpfs_size(resident: int, available: int) -> int | None:
    """The tmpfs size for images of a container resident in `resident` bytes; None: stage on disk."""
    if available <= 0 or resident + _HEADROOM > available // RESIDENT_SHARE:
        return None
    return available // TMPFS_SHARE


def stage_in_memory(images: Path, pid: int) -> bool:
    """Blocking: mounts a tmpfs on the (empty) image directory when the node can hold the
    images of `pid`'s process tree in memory; True when it did."""
    return pid > 0 and _mount_if_it_fits(images, resident_bytes(pid), "checkpoint images staged")


def release(images: Path) -> None:
    """Blocking: unmounts the image tmpfs (its memory freed at once); not mounted is fine."""
    unmount(images)


def stage_restore_in_memory(stage: Path, archive_bytes: int) -> bool:
    """Blocking: mounts a tmpfs on the (empty) restore stage when the unpacked archive, about
    `archive_bytes` (a plain tar's size), fits the node's margin; True when it did."""
    return _mount_if_it_fits(stage, archive_bytes, "checkpoint archive unpacked")


def _mount_if_it_fits(directory: Path, needed: int, what: str) -> bool:
    """A tmpfs on `directory` when `needed` bytes fit the margin; a mount the kernel refuses
    leaves the disk, as does a node without the memory."""
    size = tmpfs_size(needed, available_memory())
    if size is None:
        return False
    try:
        mount_tmpfs(directory, size=str(size), mode="0700", source=TMPFS_SOURCE)
    except OSError as exc:
        log.warning("%s on disk: a tmpfs on %s was refused: %s", what, directory, exc)
        return False
    return True


def in_memory(stage: Path) -> bool:
    """Blocking: whether the restore stage is a tmpfs of stage_restore_in_memory's."""
    return mounttable.is_mount_point(stage)


def move_images(images: Path, target: Path) -> None:
    """Blocking: the image directory of an in-memory stage, bound at `target` (the bundle's).

    A mount point cannot be renamed, and moving a mount is refused under a shared parent
    mount (systemd's /), so the directory is bound there; the stage's own mount goes with
    the stage (`release_stage`), the images stay reachable through `target` alone."""
    target.mkdir(mode=0o700)
    mounttable.mount(str(images), target, None, mounttable.MS_BIND, None, what=f"binding {images} at {target}")


def release_stage(stage: Path, keep: Path | None = None) -> None:
    """Blocking: an in-memory stage's files other than `keep` removed, then its tmpfs unmounted
    (what a bind of `keep` holds lives on there alone); a stage on disk is left as it is."""
    if not in_memory(stage):
        return
    empty_directory(stage, keep=keep)
    unmount(stage)


def release_bundle_images(bundle: Path) -> None:
    """Blocking: a restored container's images unmounted from its bundle when they were bound
    there from memory (move_images); before the bundle's removal, which would stop at the mount."""
    unmount(bundle / BUNDLE_IMAGES)
