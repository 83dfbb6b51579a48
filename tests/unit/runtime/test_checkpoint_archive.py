"""The checkpoint archive's layout: the writable layer's diff, the metadata, the all-or-nothing write."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import threading
from pathlib import Path

import pytest
from crishim.runtime.checkpoint import archive


def _whiteout(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except PermissionError:
        pytest.skip("making an overlay whiteout (a 0/0 character device) needs CAP_MKNOD")


def _opaque(path: Path) -> None:
    try:
        os.setxattr(path, archive.OPAQUE_XATTR, b"y")
    except OSError as exc:
        pytest.skip(f"trusted.* xattrs need CAP_SYS_ADMIN and a filesystem that keeps them: {exc}")


def test_rootfs_diff_keeps_changes_and_turns_whiteouts_into_deleted_paths(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    (upper / "data").mkdir(parents=True)
    (upper / "data" / "count").write_text("41\n")
    (upper / "etc").mkdir()
    _whiteout(upper / "etc" / "motd")
    (upper / "etc" / "hosts").write_text("")  # runc's mount point for the pod's hosts file
    out = tmp_path / "diff.tar"
    deleted = archive.write_rootfs_diff(upper, out, [lower], frozenset({"etc/hosts"}), threading.Event())
    assert deleted == ["/etc/motd"]
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["data", "data/count", "etc"]
        member = tar.extractfile("data/count")
        assert member is not None
        assert member.read() == b"41\n"
        assert tar.getmember("data/count").uname == ""


def test_opaque_directory_deletes_what_it_hides_of_the_image(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    (lower / "app" / "cache").mkdir(parents=True)
    (lower / "app" / "old.conf").write_text("x")
    (lower / "app" / "cache" / "blob").write_text("x")
    (lower / "app" / "keep").write_text("x")
    (upper / "app" / "cache").mkdir(parents=True)
    (upper / "app" / "keep").write_text("new")
    _opaque(upper / "app")
    out = tmp_path / "diff.tar"
    deleted = archive.write_rootfs_diff(upper, out, [lower], frozenset(), threading.Event())
    assert sorted(deleted) == ["/app/cache/blob", "/app/old.conf"]
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["app", "app/cache", "app/keep"]


def test_archive_is_renamed_into_place_with_every_member(tmp_path: Path) -> None:
    images = tmp_path / "stage" / "checkpoint"
    images.mkdir(parents=True)
    (images / "pages-1.img").write_bytes(b"\0" * 4096)
    location = tmp_path / "out" / "checkpoint.tar"
    location.parent.mkdir()
    members = [
        archive.Member(archive.CHECKPOINT_DIRECTORY, path=images),
        archive.Member(archive.DELETED_FILES, data=archive.deleted_files(["/etc/motd"])),
    ]
    archive.write_archive(location, members, threading.Event())
    assert os.listdir(location.parent) == ["checkpoint.tar"]
    assert stat.S_IMODE(location.stat().st_mode) == 0o600  # it holds every memory page
    with tarfile.open(location) as tar:
        assert sorted(tar.getnames()) == ["checkpoint", "checkpoint/pages-1.img", "deleted.files"]
        deleted = tar.extractfile("deleted.files")
        assert deleted is not None
        assert json.loads(deleted.read()) == ["/etc/motd"]


def test_abandoned_archive_leaves_no_file(tmp_path: Path) -> None:
    abort = threading.Event()
    abort.set()
    location = tmp_path / "checkpoint.tar"
    with pytest.raises(archive.Abandoned):
        archive.write_archive(location, [archive.Member("config.dump", data=b"{}")], abort)
    assert os.listdir(tmp_path) == []


def test_failed_member_leaves_no_partial_archive(tmp_path: Path) -> None:
    location = tmp_path / "checkpoint.tar"
    with pytest.raises(FileNotFoundError):
        archive.write_archive(location, [archive.Member("stats-dump", path=tmp_path / "absent")], threading.Event())
    assert os.listdir(tmp_path) == []


def test_config_dump_has_the_fields_checkpointctl_reads() -> None:
    info = archive.ContainerInfo(
        id="c" * 64,
        name="counter",
        image="busybox:latest",
        image_id="sha256:" + "a" * 64,
        image_ref="localhost/busybox@sha256:" + "b" * 64,
        runtime_handler="runc",
        created_at_ns=1_700_000_000_123_456_789,
    )
    config = json.loads(archive.config_dump(info, 1_700_000_100_000_000_000))
    assert config["id"] == "c" * 64
    assert config["name"] == "counter"
    assert config["rootfsImageName"].startswith("localhost/busybox@")
    assert config["runtime"] == "runc"
    assert config["createdTime"] == "2023-11-14T22:13:20.123456789Z"
    assert config["checkpointedTime"] == "2023-11-14T22:15:00Z"
    assert config["restoredTime"] == "0001-01-01T00:00:00Z"
    assert config["restored"] is False


def test_spec_dump_adds_cri_names_without_replacing_the_specs_own() -> None:
    spec = {"ociVersion": "1.0.2", "annotations": {"io.kubernetes.cri.container-name": "mine"}}
    dumped = json.loads(
        archive.spec_dump(spec, {archive.CRI_CONTAINER_NAME: "counter", archive.CRI_SANDBOX_NAME: "pod"})
    )
    assert dumped["annotations"] == {
        "io.kubernetes.cri.container-name": "mine",
        "io.kubernetes.cri.sandbox-name": "pod",
    }
    assert spec["annotations"] == {"io.kubernetes.cri.container-name": "mine"}  # the record's spec is not changed


# -- reading an archive back ---------------------------------------------------------------------


def _written(tmp_path: Path, *, diff: bytes | None = None, config: bytes = b'{"id": "c1"}') -> Path:
    stage = tmp_path / "stage"
    (stage / "checkpoint").mkdir(parents=True)
    (stage / "checkpoint" / "inventory.img").write_bytes(b"\x01" * 64)
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "count").write_text("7\n")
    archive.write_rootfs_diff(upper, stage / archive.ROOTFS_DIFF, [], frozenset(), threading.Event())
    if diff is not None:
        (stage / archive.ROOTFS_DIFF).write_bytes(diff)
    location = tmp_path / "c.tar"
    members = [
        archive.Member(archive.CHECKPOINT_DIRECTORY, path=stage / "checkpoint"),
        archive.Member(archive.CONFIG_DUMP, data=config),
        archive.Member(archive.SPEC_DUMP, data=b'{"ociVersion": "1.0.2"}'),
        archive.Member(archive.ROOTFS_DIFF, path=stage / archive.ROOTFS_DIFF),
        archive.Member(archive.DELETED_FILES, data=archive.deleted_files(["/etc/group"])),
    ]
    archive.write_archive(location, members, threading.Event())
    return location


def test_written_archive_unpacks_with_its_metadata(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    unpacked = archive.unpack_archive(_written(tmp_path), dest, threading.Event())
    assert unpacked.config == {"id": "c1"}
    assert unpacked.spec == {"ociVersion": "1.0.2"}
    assert unpacked.deleted == ["/etc/group"]
    assert (dest / "checkpoint" / "inventory.img").read_bytes() == b"\x01" * 64


def test_truncated_archive_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    location = _written(tmp_path)
    data = location.read_bytes()
    location.write_bytes(data[: len(data) // 2 + 100])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(archive.CorruptArchive):
        archive.unpack_archive(location, dest, threading.Event())
    assert list(dest.iterdir()) == []


def test_garbage_is_refused(tmp_path: Path) -> None:
    location = tmp_path / "c.tar"
    location.write_bytes(b"not an archive" * 100)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(archive.CorruptArchive, match="not a readable tar archive"):
        archive.unpack_archive(location, dest, threading.Event())


def test_member_leaving_the_destination_is_refused(tmp_path: Path) -> None:
    location = tmp_path / "c.tar"
    with tarfile.open(location, "w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(archive.CorruptArchive):
        archive.unpack_archive(location, dest, threading.Event())
    assert not (tmp_path / "escaped").exists()
    assert list(dest.iterdir()) == []


def test_unparsable_metadata_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(archive.CorruptArchive, match="config.dump is not JSON"):
        archive.unpack_archive(_written(tmp_path, config=b"{cut"), dest, threading.Event())
    assert list(dest.iterdir()) == []


def test_cut_rootfs_diff_is_refused(tmp_path: Path) -> None:
    upper = tmp_path / "u"
    upper.mkdir()
    (upper / "big").write_bytes(os.urandom(64 * 1024))
    whole = tmp_path / "whole.tar"
    archive.write_rootfs_diff(upper, whole, [], frozenset(), threading.Event())
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(archive.CorruptArchive):
        archive.unpack_archive(_written(tmp_path, diff=whole.read_bytes()[:20000]), dest, threading.Event())
    assert list(dest.iterdir()) == []


def _compressed(plain: Path, kind: str) -> Path:
    data = plain.read_bytes()
    if kind == "gzip":
        import gzip

        packed = gzip.compress(data)
    elif kind == "xz":
        import lzma

        packed = lzma.compress(data)
    else:
        import zstandard

        packed = zstandard.ZstdCompressor().compress(data)
    location = plain.with_suffix(f".tar.{kind}")
    location.write_bytes(packed)
    return location


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd"])
def test_compressed_archive_unpacks_as_the_plain_one(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    unpacked = archive.unpack_archive(_compressed(_written(tmp_path), kind), dest, threading.Event())
    assert unpacked.config == {"id": "c1"}
    assert unpacked.deleted == ["/etc/group"]
    assert (dest / "checkpoint" / "inventory.img").read_bytes() == b"\x01" * 64


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_truncated_compressed_archive_is_refused_and_leaves_nothing(tmp_path: Path, kind: str) -> None:
    location = _compressed(_written(tmp_path), kind)
    data = location.read_bytes()
    location.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(archive.CorruptArchive):
        archive.unpack_archive(location, dest, threading.Event())
    assert list(dest.iterdir()) == []


def test_config_dump_records_where_it_was_taken_under_its_own_key() -> None:
    info = archive.ContainerInfo("c" * 64, "counter", "busybox", "sha256:" + "a" * 64, "", "runc", 1)
    origin = {"format": 1, "architecture": "amd64", "criuVersion": "3.17.1", "version": "0.1.0"}
    config = json.loads(archive.config_dump(info, 2, origin))
    assert config["crishim"] == origin
    assert config["rootfsImageName"] == "busybox"  # checkpointctl's fields unchanged beside it


def _layer(tmp_path: Path) -> Path:
    """A checkpoint image's layer as its pull unpacks it: the written archive's members, in a directory."""
    layer = tmp_path / "layer"
    layer.mkdir()
    with tarfile.open(_written(tmp_path)) as tar:
        tar.extractall(layer, filter="data")
    return layer


def test_a_layer_is_linked_not_copied_with_its_metadata(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    linked = archive.link_layer(layer, dest, threading.Event())
    assert (linked.config, linked.spec, linked.deleted) == ({"id": "c1"}, {"ociVersion": "1.0.2"}, ["/etc/group"])
    pages = dest / "checkpoint" / "inventory.img"
    assert pages.read_bytes() == b"\x01" * 64
    assert os.stat(pages).st_ino == os.stat(layer / "checkpoint" / "inventory.img").st_ino
    # The restore's names are its own: removing them leaves the image's layer whole.
    archive.empty_directory(dest)
    assert (layer / "checkpoint" / "inventory.img").read_bytes() == b"\x01" * 64
    assert (layer / archive.CONFIG_DUMP).is_file()


def test_what_criu_writes_on_a_restore_is_never_linked_from_a_layer(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    (layer / "checkpoint" / "stats-restore").write_bytes(b"old")
    dest = tmp_path / "dest"
    dest.mkdir()
    archive.link_layer(layer, dest, threading.Event())
    assert not (dest / "checkpoint" / "stats-restore").exists()
    assert (dest / "checkpoint" / "inventory.img").is_file()


def test_a_layer_with_a_symlink_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    (layer / "checkpoint" / "pages-1.img").symlink_to("/etc/shadow")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(archive.CorruptArchive, match="'checkpoint/pages-1.img' is neither a file nor a directory"):
        archive.link_layer(layer, dest, threading.Event())
    assert list(dest.iterdir()) == []


def test_a_layer_lacking_a_member_or_with_a_cut_rootfs_diff_is_refused(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    (layer / archive.SPEC_DUMP).unlink()
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(archive.CorruptArchive, match="it lacks spec.dump"):
        archive.link_layer(layer, dest, threading.Event())
    assert list(dest.iterdir()) == []
    (layer / archive.SPEC_DUMP).write_text("{}")
    diff = layer / archive.ROOTFS_DIFF
    diff.write_bytes(diff.read_bytes()[:700])
    with pytest.raises(archive.CorruptArchive, match="rootfs-diff.tar"):
        archive.link_layer(layer, dest, threading.Event())
    assert list(dest.iterdir()) == []


def test_an_abandoned_link_leaves_nothing(tmp_path: Path) -> None:
    abort = threading.Event()
    abort.set()
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(archive.Abandoned):
        archive.link_layer(_layer(tmp_path), dest, abort)
    assert list(dest.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_layer_on_another_filesystem_is_copied(tmp_path: Path) -> None:
    from crishim.runtime.mounts import mount_tmpfs, unmount

    layer = _layer(tmp_path)
    dest = tmp_path / "dest"
    mount_tmpfs(dest, mode="0700")
    try:
        linked = archive.link_layer(layer, dest, threading.Event())
        pages = dest / "checkpoint" / "inventory.img"
        assert pages.read_bytes() == b"\x01" * 64
        assert os.stat(pages).st_dev != os.stat(layer / "checkpoint" / "inventory.img").st_dev
        assert linked.config == {"id": "c1"}
    finally:
        unmount(dest)
