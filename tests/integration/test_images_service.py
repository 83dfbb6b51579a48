"""ImageService over real gRPC, overlay mounts of pulled layers, and the split image filesystem."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from crishim.cri_api import api_pb2, api_pb2_grpc
from crishim.images.snapshots import mount_rootfs
from crishim.images.store import ImageStore
from crishim.images.volumes import mount_image_volume, unmount_image_volume
from crishim.oci.mounttable import is_mount_point as is_mounted
from crishim.oci.mounttable import unmount
from crishim.runtime.rpc.images import ImageServicer

if TYPE_CHECKING:
    from tests.support.images import TestImages

pytest_plugins = ["tests.support.registry", "tests.support.images"]

pytestmark = pytest.mark.root


@pytest.fixture
def two_disks(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two separate tmpfs mounts: one for the image store, one for container storage."""
    images, containers = tmp_path / "imagefs", tmp_path / "containerfs"
    for path in (images, containers):
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(path)], check=True)
    try:
        yield images, containers
    finally:
        for path in (images, containers):
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
async def service(
    two_disks: tuple[Path, Path],
) -> AsyncIterator[tuple[api_pb2_grpc.ImageServiceStub, ImageStore]]:
    images, containers = two_disks
    store = ImageStore(images / "store", None, sync_layers=False)
    server = grpc.aio.server()
    api_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(store, containers), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield api_pb2_grpc.ImageServiceStub(channel), store
    finally:
        await channel.close()
        await server.stop(None)
        await store.aclose()


def spec(image: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=image)


async def test_image_service_round_trip(
    service: tuple[api_pb2_grpc.ImageServiceStub, ImageStore], test_images: TestImages
) -> None:
    stub, store = service
    ref = test_images.ref("user-uid:latest")
    pulled = await stub.PullImage(api_pb2.PullImageRequest(image=spec(ref)))
    status = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(ref), verbose=True))
    assert status.image.id == pulled.image_ref == test_images.image("user-uid:latest").config_digest
    assert status.image.uid.value == 1001
    assert status.image.repo_tags == [ref]
    assert json.loads(status.info["info"])["imageSpec"]["config"]["User"] == "1001"
    listed = await stub.ListImages(api_pb2.ListImagesRequest())
    assert [i.id for i in listed.images] == [pulled.image_ref]
    filtered = await stub.ListImages(api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter(image=spec("nope"))))
    assert list(filtered.images) == []
    chunks = [c async for c in stub.StreamImages(api_pb2.StreamImagesRequest())]
    assert [i.id for c in chunks for i in c.images] == [pulled.image_ref]
    await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(pulled.image_ref)))
    await stub.RemoveImage(api_pb2.RemoveImageRequest(image=spec(pulled.image_ref)))
    missing = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=spec(ref)))
    assert not missing.HasField("image")


async def test_pull_errors_map_to_grpc_codes(
    service: tuple[api_pb2_grpc.ImageServiceStub, ImageStore], test_images: TestImages
) -> None:
    stub, _ = service
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.PullImage(api_pb2.PullImageRequest(image=spec("Bad Name")))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.PullImage(api_pb2.PullImageRequest(image=spec(f"{test_images.registry.host}/no/such:1")))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_split_image_filesystem_is_reported_separately(
    service: tuple[api_pb2_grpc.ImageServiceStub, ImageStore],
    two_disks: tuple[Path, Path],
    test_images: TestImages,
) -> None:
    stub, store = service
    images, containers = two_disks
    before = await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())
    record = await store.pull(test_images.ref("busybox:latest"))
    rootfs, upper, work = containers / "c1/rootfs", containers / "c1/upper", containers / "c1/work"
    mount_rootfs(store.layer_paths(record.id), upper, work, rootfs)
    try:
        (rootfs / "written-by-container").write_bytes(b"x" * 1_000_000)
        assert (upper / "written-by-container").is_file()
        after = await stub.ImageFsInfo(api_pb2.ImageFsInfoRequest())
    finally:
        unmount(rootfs)
    (image_fs,) = after.image_filesystems
    (container_fs,) = after.container_filesystems
    assert image_fs.fs_id.mountpoint == str(images / "store")
    assert container_fs.fs_id.mountpoint == str(containers)
    assert image_fs.used_bytes.value > before.image_filesystems[0].used_bytes.value + 1_000_000
    assert container_fs.used_bytes.value >= before.container_filesystems[0].used_bytes.value + 1_000_000
    assert container_fs.inodes_used.value > 0
    assert image_fs.inodes_used.value > 0
    assert not list((images / "store").rglob("written-by-container"))


async def test_overlay_rootfs_shows_whiteouts_and_opaque_dirs(tmp_path: Path, test_images: TestImages) -> None:
    store = ImageStore(tmp_path / "store", None, sync_layers=False)
    try:
        record = await store.pull(test_images.ref("layers:latest"))
        target = tmp_path / "rootfs"
        mount_rootfs(store.layer_paths(record.id), tmp_path / "upper", tmp_path / "work", target)
        try:
            assert sorted(p.name for p in (target / "data").iterdir()) == [
                "keep",
                "keep-hardlink",
                "link",
                "opaque",
                "owned",
            ]
            assert [p.name for p in (target / "data/opaque").iterdir()] == ["new"]
            assert (target / "bin/busybox").is_file()
        finally:
            unmount(target)
        volume = tmp_path / "volume"
        mount_image_volume(store, record.id, volume, sub_path="data")
        try:
            assert (volume / "keep").read_bytes() == b"keep\n"
            with pytest.raises(OSError, match="Read-only"):
                (volume / "new").write_text("x")
            await store.remove(record.id)
            assert store.layer_paths(record.id)[0].is_dir()  # leased by the volume
        finally:
            unmount_image_volume(store, volume)
        assert not is_mounted(volume)
        assert not store.layer_dir(record.layers[0]).exists()
    finally:
        await store.aclose()
