"""Image volumes (KEP-4639): a read-only view of an image's layers, optionally a sub-path of it.

The whole image is mounted as an overlay on a private staging directory, the
sub-path is bind-mounted read-only onto the target, and the staging mount is
detached at once (the bind keeps the overlay alive). The sub-path must stay
inside the image after resolving symlinks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .errors import InvalidArgument, NotFound
from .snapshots import bind_readonly, mount_overlay, unmount
from .store import ImageStore


def volume_holder(target: Path) -> str:
    return f"image-volume:{target}"


def _inside(root: Path, sub_path: str) -> Path:
    if sub_path.startswith("/") or ".." in Path(sub_path).parts:
        raise InvalidArgument(f"image volume sub_path {sub_path!r} must be relative and not contain '..'")
    candidate = Path(os.path.realpath(root / sub_path))
    real_root = Path(os.path.realpath(root))
    if candidate != real_root and real_root not in candidate.parents:
        raise InvalidArgument(f"image volume sub_path {sub_path!r} leaves the image (through a symlink)")
    if not candidate.exists():
        raise NotFound(f"image volume sub_path {sub_path!r} does not exist in the image")
    return candidate


def mount_image_volume(store: ImageStore, image_id: str, target: Path, sub_path: str | None = None) -> None:
    """Mounts the image read-only on `target` and takes a lease so its layers stay; blocking."""
    layers = store.layer_paths(image_id)
    if not sub_path:
        mount_overlay(layers, None, None, target, readonly=True)
    else:
        staging = store.root / "volume-staging" / hashlib.sha256(str(target).encode()).hexdigest()[:16]
        mount_overlay(layers, None, None, staging, readonly=True)
        try:
            bind_readonly(_inside(staging, sub_path), target)
        finally:
            unmount(staging)
            shutil.rmtree(staging, ignore_errors=True)
    try:
        store.acquire(image_id, volume_holder(target))
    except BaseException:
        unmount(target)
        raise


def unmount_image_volume(store: ImageStore, target: Path) -> None:
    """Undoes mount_image_volume; unmounted already is fine."""
    unmount(target)
    store.release(volume_holder(target))
