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


async def mount_image_rootfs(svc: Services, image_id: str, target: Path, bundle: Path) -> None:
    lower = svc.images.layer_paths(image_id)
    upper, work = bundle / "upper", bundle / "work"
    for d in (upper, work, target):
        d.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(snapshots.mount_rootfs, lower, upper, work, target)
