"""Container root filesystems: an overlay of the image's layers with a writable upper dir.

The upper and work dirs live in the container's own directory under `root`,
so with a split image filesystem writes land on the container disk while the
layers stay on the image disk (KEP-4191).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from crishim.images import snapshots
from crishim.runtime.services import Services


async def mount_image_rootfs(
    svc: Services, image_id: str, target: Path, bundle: Path, userns_path: str | None = None
) -> None:
    """The overlay rootfs; with `userns_path`, over idmapped views of the layers (see idmap.py)."""
    lower = svc.images.layer_paths(image_id)
    upper, work = bundle / "upper", bundle / "work"
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    if userns_path:
        lower = await asyncio.to_thread(_idmapped_layers, lower, bundle / "idmapped", userns_path)
    await asyncio.to_thread(snapshots.mount_rootfs, lower, upper, work, target)


def _idmapped_layers(layers: list[Path], base: Path, userns_path: str) -> list[Path]:
    from crishim.runtime.idmap import idmapped_bind

    views = []
    try:
        for i, layer in enumerate(layers):
            view = base / str(i)
            idmapped_bind(layer, view, userns_path)
            views.append(view)
    except BaseException:
        unmount_idmapped_layers(base)
        raise
    return views


def unmount_idmapped_layers(base: Path) -> None:
    """Undoes _idmapped_layers; absent is fine."""
    from crishim.runtime.mounts import unmount

    if base.is_dir():
        for view in base.iterdir():
            unmount(view)


def create_mount_points(rootfs: Path, mounts: list[dict[str, object]]) -> None:
    """Creates missing mount points in the container's rootfs, as host root.

    In a user namespace the container's root is an unprivileged host user that
    cannot create them in image directories owned by the host's root. Paths
    that go through a symlink are left to the OCI runtime, which resolves them
    safely inside the rootfs.
    """
    for mount in mounts:
        destination = str(mount.get("destination", ""))
        source = str(mount.get("source", ""))
        if not destination.startswith("/") or destination == "/":
            continue
        current = rootfs
        parts = [p for p in destination.split("/") if p]
        for i, part in enumerate(parts):
            current = current / part
            if current.is_symlink():
                break
            last = i == len(parts) - 1
            if current.exists():
                continue
            if last and mount.get("type") == "bind" and Path(source).is_file():
                current.touch(mode=0o644)
            else:
                current.mkdir(mode=0o755)


def chown_writable_layer(bundle: Path, uid: int, gid: int) -> None:
    """The upper and work dirs belong to the pod's mapped root, so it can write its rootfs."""
    import os

    for name in ("upper", "work"):
        os.chown(bundle / name, uid, gid)
