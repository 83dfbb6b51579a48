"""Pulls from a real docker-registry into a real ImageStore."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from crishim.images import build as b
from crishim.images.errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from crishim.images.manifest import Credentials
from crishim.images.records import PullProgress
from crishim.images.store import ImageStore
from crishim.images.usage import tree_usage

from tests.support import testimages as tb
from tests.support.push import Credentials as PushCredentials
from tests.support.push import Pusher

if TYPE_CHECKING:
    from tests.support.images import TestImages
    from tests.support.registry import RegistryServer

pytest_plugins = ["tests.support.registry", "tests.support.images"]

pytestmark = pytest.mark.root


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ImageStore]:
    s = ImageStore(tmp_path / "images", None, sync_layers=False)
    yield s
    await s.aclose()


def listing(store: ImageStore) -> set[str]:
    return {p.name for p in (store.root / "tmp").iterdir()}


async def test_pull_returns_the_config_digest_and_records_names(store: ImageStore, test_images: TestImages) -> None:
    ref = test_images.ref("busybox:latest")
    seen: list[PullProgress] = []
    record = await store.pull(ref, progress=seen.append)
    built = test_images.image("busybox:latest")
    assert record.id == built.config_digest
    assert record.repo_tags == (ref,)
    assert record.repo_digests == (ref.rsplit(":", 1)[0] + "@" + built.digest,)
    assert store.resolve(record.id[7:19]).id == record.id
    assert store.resolve(record.repo_digests[0]).id == record.id
    assert seen
    assert seen[-1].done
    assert store.bytes_pulled_total > 0
    assert store.puller.pulls_in_flight == 0
    rootfs = store.layer_paths(record.id)
    assert (rootfs[0] / "bin" / "busybox").is_file()
    assert store.config(record.id)["config"]["Cmd"] == ["sh"]


async def test_whiteouts_hardlinks_and_ownership_survive(store: ImageStore, test_images: TestImages) -> None:
    record = await store.pull(test_images.ref("layers:latest"))
    top = store.layer_paths(record.id)[-1]
    gone = (top / "data/remove-me").lstat()
    assert stat.S_ISCHR(gone.st_mode)
    assert gone.st_rdev == 0
    assert os.getxattr(top / "data/opaque", "trusted.overlay.opaque") == b"y"
    owned = (top / "data/owned").stat()
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1001, 1234, 0o640)
    assert (top / "data/keep-hardlink").read_bytes() == b"keep\n"
    assert (top / "data/keep-hardlink").stat().st_ino == (top / "data/keep").stat().st_ino


async def test_index_picks_this_platform_and_other_formats_pull(store: ImageStore, test_images: TestImages) -> None:
    multi = await store.pull(test_images.ref("multiarch:latest"))
    zstd = await store.pull(test_images.ref("busybox-zstd:latest"))
    docker = await store.pull(test_images.ref("busybox-docker:latest"))
    assert multi.id == test_images.image("busybox:latest").config_digest
    assert (store.layer_paths(zstd.id)[0] / "bin/busybox").is_file()
    assert (store.layer_paths(docker.id)[0] / "bin/busybox").is_file()


async def test_user_fields(store: ImageStore, test_images: TestImages) -> None:
    uid = await store.pull(test_images.ref("user-uid-group:latest"))
    name = await store.pull(test_images.ref("user-name:latest"))
    assert (uid.uid, uid.username) == (1001, "")
    assert (name.uid, name.username) == (None, "www-data")


async def test_concurrent_pulls_share_one_download(store: ImageStore, test_images: TestImages) -> None:
    ref = test_images.ref("busybox:latest")
    first, second = await asyncio.gather(store.pull(ref), store.pull(ref))
    assert first == second
    assert store.puller.pulls_total == 1


async def test_same_image_from_two_registries_has_one_id_and_both_names(
    store: ImageStore, test_images: TestImages
) -> None:
    from tests.support.registry import start_registry

    built = test_images.built["busybox:latest"]
    with start_registry() as other:
        with Pusher(other.host) as pusher:
            pusher.push("mirror/busybox", built, ["v1"])
        a = await store.pull(test_images.ref("busybox:latest"))
        c = await store.pull(f"{other.host}/mirror/busybox:v1")
    assert a.id == c.id
    assert set(c.repo_tags) == {test_images.ref("busybox:latest"), f"{other.host}/mirror/busybox:v1"}
    assert len(c.repo_digests) == 2
    assert len(store.list()) == 1


async def test_shared_layers_are_unpacked_once_and_kept_while_used(store: ImageStore, test_images: TestImages) -> None:
    busybox = await store.pull(test_images.ref("busybox:latest"))
    layers = await store.pull(test_images.ref("layers:latest"))
    base = store.layer_paths(busybox.id)[0]
    assert store.layer_paths(layers.id)[0] == base
    assert store.meta.layer_refcount(busybox.layers[0]) == 2
    await store.remove(test_images.ref("layers:latest"))
    assert base.is_dir()
    assert not store.layer_paths(busybox.id)[-1] == store.layer_dir(layers.layers[-1])
    assert not store.layer_dir(layers.layers[-1]).exists()
    with pytest.raises(NotFound, match="pull it first"):
        store.resolve(test_images.ref("layers:latest"))
    await store.remove(busybox.id)
    await store.remove(busybox.id)  # absent: no error
    assert not base.exists()
    assert not list((store.root / "blobs" / "sha256").iterdir())


async def test_leased_image_keeps_layers_after_remove(store: ImageStore, test_images: TestImages) -> None:
    record = await store.pull(test_images.ref("busybox:latest"))
    store.acquire(record.id, "container:abc")
    await store.remove(record.id)
    assert store.list() == []
    assert store.layer_paths(record.id)[0].is_dir()
    store.release("container:abc")
    assert not store.layer_dir(record.layers[0]).exists()


async def test_pinned_images_are_not_removed(store: ImageStore, test_images: TestImages) -> None:
    record = await store.pull(test_images.ref("busybox:latest"))
    store.set_pinned(record.id, True)
    with pytest.raises(FailedPrecondition, match="pinned"):
        await store.remove(record.id)
    assert store.resolve(record.id).pinned


async def test_missing_image_is_not_found(store: ImageStore, registry: RegistryServer) -> None:
    with pytest.raises(NotFound, match="404"):
        await store.pull(f"{registry.host}/nothing/here:latest")
    assert store.list() == []


async def test_unknown_host_is_unavailable(store: ImageStore) -> None:
    with pytest.raises(Unavailable, match="cannot resolve"):
        await store.pull("no-such-host.invalid/app:1")


def push_private_app(registry: RegistryServer, content: bytes) -> tuple[b.BuiltImage, str]:
    """A one-file image pushed with the registry's credentials as private/app:1; returns it and its reference."""
    built = b.build_image([[b.regular("hello", content)]])
    with Pusher(registry.host, credentials=PushCredentials(registry.username, registry.password)) as pusher:
        pusher.push("private/app", built, ["1"])
    return built, f"{registry.host}/private/app:1"


async def test_basic_auth_registry(store: ImageStore, auth_registry: RegistryServer) -> None:
    built, ref = push_private_app(auth_registry, b"hi\n")
    with pytest.raises(PermissionDenied, match=auth_registry.host):
        await store.pull(ref)
    with pytest.raises(PermissionDenied, match="refused"):
        await store.pull(ref, Credentials(username=auth_registry.username, password="wrong"))
    import base64

    auth = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    record = await store.pull(ref, Credentials(auth=auth))
    assert record.id == built.config_digest


async def test_token_auth_registry(store: ImageStore, token_registry: RegistryServer) -> None:
    built, ref = push_private_app(token_registry, b"token\n")
    with pytest.raises(PermissionDenied):
        await store.pull(ref)
    record = await store.pull(ref, Credentials(username=token_registry.username, password=token_registry.password))
    assert record.id == built.config_digest


async def test_import_oci_layout_and_tar(store: ImageStore, tmp_path: Path) -> None:
    built = b.build_image([tb.busybox_rootfs_layer(), [b.regular("etc/imported", b"yes\n")]])
    layout = b.write_layout(tmp_path / "layout", {"example.com/imported/app:1": built})
    records = await store.import_archive(layout)
    assert [r.id for r in records] == [built.config_digest]
    assert records[0].repo_tags == ("example.com/imported/app:1",)
    assert (store.layer_paths(built.config_digest)[-1] / "etc/imported").read_bytes() == b"yes\n"
    await store.remove(built.config_digest)
    tar = tb.write_layout_tar(tmp_path / "layout.tar", {"example.com/imported/app:2": built})
    records = await store.import_archive(tar)
    assert records[0].repo_tags == ("example.com/imported/app:2",)


async def test_fs_usage_counts_the_store(store: ImageStore, test_images: TestImages) -> None:
    before = store.fs_usage()
    await store.pull(test_images.ref("busybox:latest"))
    after = store.fs_usage()
    assert after[0] > before[0] + 1_000_000
    assert after[1] > before[1]
    assert tree_usage(store.root) == after
