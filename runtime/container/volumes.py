"""Image volumes (KEP-4639): a CRI Mount whose `image` names a pulled image."""

from __future__ import annotations

import asyncio
from pathlib import Path

from crishim.cri_api import api_pb2
from crishim.images import volumes as image_volumes
from crishim.oci.inputs import Mount
from crishim.runtime.errors import NotFound
from crishim.runtime.services import Services


async def mount_image_volume(
    svc: Services, container_id: str, bundle: Path, mount: api_pb2.Mount, where: str
) -> Mount:
    """Mounts the image read-only under the container's bundle; the spec binds it in."""
    try:
        image = svc.images.resolve(mount.image.image)
    except Exception as exc:
        if type(exc).__name__ == "NotFound":
            raise NotFound(f"{where}: image volume {mount.image.image!r} is not pulled; pull it first") from exc
        raise
    index = len(list((bundle / "volumes").glob("*"))) if (bundle / "volumes").exists() else 0
    target = bundle / "volumes" / str(index)
    target.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(
        image_volumes.mount_image_volume, svc.images, image.id, target, mount.image_sub_path or None
    )
    return Mount(container_path=mount.container_path, host_path=str(target), readonly=True)


def unmount_image_volume(svc: Services, target: Path) -> None:
    image_volumes.unmount_image_volume(svc.images, target)
