"""Image volumes (KEP-4639): a CRI Mount whose `image` names a pulled image.

Each image volume of a container is a read-only overlay of the image's layers
(or a bind of `image_sub_path` inside it) at `<bundle>/volumes/<n>`, which the
OCI spec binds to `container_path`. The mount holds a lease on the image until
the container is removed, so RemoveImage cannot pull the layers from under it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from crishim.cri_api import api_pb2
from crishim.images import errors as image_errors
from crishim.images import volumes as image_volumes
from crishim.images.errors import ImageError
from crishim.images.metadata import SHARED_SET
from crishim.oci.inputs import Mount
from crishim.runtime import errors
from crishim.runtime.services import Services


def _with_where(exc: ImageError, where: str) -> Exception:
    """The same error class (so the same gRPC code), its message prefixed with the mount's field."""
    try:
        return type(exc)(f"{where}: {exc}")
    except TypeError:  # a class whose constructor takes more than a message
        return exc


async def mount_image_volume(
    svc: Services,
    container_id: str,
    bundle: Path,
    mount: api_pb2.Mount,
    where: str,
    image_set: str = SHARED_SET,
) -> Mount:
    """Mounts the image read-only under the container's bundle; the spec binds it in.

    `image_set` is the set of the sandbox's runtime handler (svc.images.image_set(handler)):
    the kubelet pulls image volumes with the pod's runtime handler. The resolved image ID is
    written to `mount.image.image_ref`, so ContainerStatus.mounts says which image was mounted.
    """
    try:
        image = svc.images.resolve(mount.image.image, image_set)
    except ImageError as exc:
        if isinstance(exc, image_errors.NotFound):
            raise errors.NotFound(
                f"{where}: image volume {mount.image.image!r} is not pulled; pull it first "
                f"(crictl pull {mount.image.image})"
            ) from exc
        raise _with_where(exc, where) from exc
    volumes_dir = bundle / "volumes"
    index = len(list(volumes_dir.iterdir())) if volumes_dir.exists() else 0
    target = volumes_dir / str(index)
    target.mkdir(parents=True, exist_ok=True)
    try:
        await asyncio.to_thread(
            image_volumes.mount_image_volume,
            svc.images,
            image.id,
            target,
            mount.image_sub_path or None,
            image_set,
        )
    except ImageError as exc:
        raise _with_where(exc, f"{where} (image {mount.image.image!r})") from exc
    mount.image.image_ref = image.id
    return Mount(container_path=mount.container_path, host_path=str(target), readonly=True)


def unmount_image_volume(svc: Services, target: Path) -> None:
    image_volumes.unmount_image_volume(svc.images, target)
