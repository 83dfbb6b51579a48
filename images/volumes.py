"""Image volumes (KEP-4639): a read-only view of an image's layers, optionally a sub-path of it.

The whole image is mounted as an overlay (no upper dir, so whiteouts and opaque
directories hide what they should and nothing can be written) on a private
staging directory, the sub-path is bind-mounted read-only onto the target, and
the staging mount is detached at once (the bind keeps the overlay alive). The
sub-path must stay inside the image after resolving symlinks.

A lease named after the target is taken before anything is mounted and kept
until unmount: RemoveImage meanwhile only drops the image's names, and its
layers stay on disk under the mount.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from crishim.oci.mounttable import unmount

from .errors import InvalidArgument, NotFound
from .metadata import SHARED_SET
from .snapshots import bind_readonly, mount_overlay
from .store import VOLUME_HOLDER_PREFIX, ImageStore


def volume_holder(target: Path) -> str:
    return f"{VOLUME_HOLDER_PREFIX}{target}"


def _inside(root: Path, sub_path: str, image_id: str) -> Path:
    if sub_path.startswith("/") or ".." in Path(sub_path).parts:
        raise InvalidArgument(f"image volume sub_path {sub_path!r} must be relative and not contain '..'")
    candidate = Path(os.path.realpath(root / sub_path))
    real_root = Path(os.path.realpath(root))
    if candidate != real_root and real_root not in candidate.parents:
        raise InvalidArgument(f"image volume sub_path {sub_path!r} leaves the image (through a symlink)")
    if not candidate.exists():
        raise NotFound(
            f"image volume sub_path {sub_path!r} does not exist in image {image_id}: "
            "name a directory or file the image contains"
        )
    return candidate


def _bind_target_for(source: Path, target: Path) -> None:
    """A file sub-path needs a file to bind onto; a directory one a directory."""
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch(exist_ok=True)


def mount_image_volume(
    store: ImageStore,
    image_id: str,
    target: Path,
    sub_path: str | None = None,
    image_set: str = SHARED_SET,
) -> None:
    """Mounts the image read-only on `target` under a lease so its layers stay; blocking."""
    holder = volume_holder(target)
    store.acquire(image_id, holder, image_set)
    try:
        layers = store.layer_paths(image_id)
        if not sub_path:
            mount_overlay(layers, None, None, target, readonly=True)
            return
        import hashlib  # not at the top: it loads libcrypto, which an idle daemon does without

        staging = store.root / "volume-staging" / hashlib.sha256(str(target).encode()).hexdigest()[:16]
        mount_overlay(layers, None, None, staging, readonly=True)
        try:
            source = _inside(staging, sub_path, image_id)
            _bind_target_for(source, target)
            bind_readonly(source, target)
        finally:
            unmount(staging)
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        unmount(target)
        store.release(holder)
        raise


def unmount_image_volume(store: ImageStore, target: Path) -> None:
    """Undoes mount_image_volume; unmounted already is fine. The lease goes last, so an image
    removed while mounted is deleted only once nothing shows its layers any more."""
    unmount(target)
    store.release(volume_holder(target))
