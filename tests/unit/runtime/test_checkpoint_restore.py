"""Restore's first half on plain directories: the request it builds, and the archive applied to a rootfs."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.oci.checkpoint import restore_opts
from crishim.oci.conmon import ConmonLaunch, build_args
from crishim.oci.mounttable import is_mount_point
from crishim.runtime.checkpoint import archive, memstage, safe_tar
from crishim.runtime.checkpoint.restore import (
    RestoreSource,
    apply_to_bundle,
    criu_annotations,
    discard,
    names_archive,
    restored_config,
)
from crishim.runtime.errors import InvalidArgument

SPEC = {"process": {"args": ["sh", "-c", "count"], "env": ["PATH=/bin", "A=b=c"], "cwd": "/work"}}


def test_only_an_absolute_path_names_an_archive() -> None:
    assert names_archive("/var/lib/kubelet/checkpoints/c.tar")
    assert not names_archive("busybox:latest")
    assert not names_archive("127.0.0.1:5000/busybox@sha256:" + "a" * 64)


def test_the_request_gets_the_base_image_and_what_it_leaves_out_from_the_dumped_spec() -> None:
    asked = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image="/c.tar"))
    restored = restored_config(asked, "busybox:latest", SPEC)
    assert restored.image.image == "busybox:latest"
    assert list(restored.command) == ["sh", "-c", "count"]
    assert [(e.key, e.value) for e in restored.envs] == [("PATH", b"/bin"), ("A", b"b=c")]
    assert restored.working_dir == "/work"
    assert asked.image.image == "/c.tar"  # the caller's message is left as it was


def test_what_the_request_says_wins_over_the_dumped_spec() -> None:
    asked = pb.ContainerConfig(
        image=pb.ImageSpec(image="/c.tar"), args=["x"], envs=[pb.KeyValue(key="K", value=b"v")], working_dir="/w"
    )
    restored = restored_config(asked, "busybox", SPEC)
    assert (list(restored.command), list(restored.args)) == ([], ["x"])
    assert [(e.key, e.value) for e in restored.envs] == [("K", b"v")]
    assert restored.working_dir == "/w"


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, *, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    if link:
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    elif data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


def _source(tmp_path: Path, deleted: list[str], diff: list[tuple[str, bytes | None, str]]) -> RestoreSource:
    root = tmp_path / "unpacked"
    (root / archive.CHECKPOINT_DIRECTORY).mkdir(parents=True)
    (root / archive.CHECKPOINT_DIRECTORY / "inventory.img").write_bytes(b"img")
    (root / archive.CONTAINER_LOG).write_text("2026-01-01T00:00:00Z stdout F count 1\n")
    with tarfile.open(root / archive.ROOTFS_DIFF, "w") as tar:
        for name, data, link in diff:
            _add(tar, name, data, link=link)
    unpacked = archive.Unpacked(root, {"rootfsImageName": "busybox"}, SPEC, deleted)
    return RestoreSource(str(tmp_path / "c.tar"), unpacked)


def _rootfs(tmp_path: Path) -> Path:
    rootfs = tmp_path / "bundle" / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    (rootfs / "var" / "cache").mkdir(parents=True)
    (rootfs / "var" / "cache" / "old").write_text("x")
    (rootfs / "out").symlink_to(tmp_path / "host")
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "precious").write_text("keep")
    return rootfs


def test_the_archive_is_applied_to_the_rootfs_and_its_images_and_log_moved(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    bundle = rootfs.parent
    diff = [("count", b"42\n", ""), ("data", None, ""), ("data/kept.txt", b"before\n", "")]
    source = _source(tmp_path, ["/etc/group", "/var/cache", "/absent", "/out/precious"], diff)
    log = tmp_path / "logs" / "pod" / "c.log"
    apply_to_bundle(source, rootfs, bundle, log)
    assert (rootfs / "count").read_text() == "42\n"
    assert (rootfs / "data" / "kept.txt").read_text() == "before\n"
    assert not (rootfs / "etc" / "group").exists()
    assert not (rootfs / "var" / "cache").exists()
    assert (tmp_path / "host" / "precious").read_text() == "keep"  # a deletion never leaves the rootfs
    assert (bundle / archive.CHECKPOINT_DIRECTORY / "inventory.img").read_bytes() == b"img"
    assert log.read_text().endswith("count 1\n")  # the log continues the checkpointed one
    # CRIU is told to leave the restored tasks in the cgroup runc puts it in: the new container's.
    criu_config = Path(criu_annotations(bundle)["org.criu.config"])
    assert criu_config.parent == bundle
    assert criu_config.read_text().split() == ["manage-cgroups=ignore"]


def test_a_diff_writing_through_a_link_out_of_the_rootfs_is_refused(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    source = _source(tmp_path, [], [("escape", None, "/"), ("escape/etc/evil", b"x", "")])
    with pytest.raises(InvalidArgument, match="cannot be applied"):
        apply_to_bundle(source, rootfs, rootfs.parent, tmp_path / "c.log")
    assert not Path("/etc/evil").exists()


def test_conmon_restores_instead_of_creating() -> None:
    base = {"cid": "c", "bundle": Path("/b"), "log_path": Path("/l"), "exit_dir": Path("/e"), "socket_dir": Path("/s")}
    created = build_args("conmon", ["/usr/sbin/runc"], ConmonLaunch(**base))  # type: ignore[arg-type]
    assert "--restore" not in created
    launch = ConmonLaunch(**base, restore_from=Path("/b/checkpoint"), restore_opts=restore_opts())  # type: ignore[arg-type]
    args = build_args("conmon", ["/usr/sbin/runc"], launch)
    assert args[args.index("--restore") + 1] == "/b/checkpoint"
    assert [a for a in args if a.startswith("--runtime-opt=")] == [
        "--runtime-opt=--file-locks", "--runtime-opt=--manage-cgroups-mode", "--runtime-opt=soft",
    ]  # fmt: skip
    assert json.dumps(args)  # plain strings only


@pytest.mark.parametrize(
    ("member", "strict"),
    [
        (("../up", b"x", ""), False),
        (("/abs", b"x", ""), False),
        (("link", None, "/etc/passwd"), True),
        (("link", None, "../../x"), True),
    ],
)
def test_members_leading_out_are_refused(tmp_path: Path, member: tuple[str, bytes | None, str], strict: bool) -> None:
    name, data, link = member
    info = tarfile.TarInfo(name)
    if link:
        info.type, info.linkname = tarfile.SYMTYPE, link
    else:
        info.size = len(data or b"")
    with pytest.raises(safe_tar.UnsafeMember):
        safe_tar.check(info, tmp_path, strict=strict)


def test_an_archive_member_may_not_be_a_device_but_a_layer_may_link_absolutely(tmp_path: Path) -> None:
    device = tarfile.TarInfo("null")
    device.type = tarfile.CHRTYPE
    with pytest.raises(safe_tar.UnsafeMember, match="device"):
        safe_tar.check(device, tmp_path, strict=True)
    link = tarfile.TarInfo("bin/sh")
    link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
    safe_tar.check(link, tmp_path, strict=False)  # resolves inside the container, not on the node


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_an_archive_unpacked_in_memory_binds_its_images_into_the_bundle_until_they_are_released(
    tmp_path: Path,
) -> None:
    rootfs = _rootfs(tmp_path)
    bundle = rootfs.parent
    stage = tmp_path / "unpacked"
    stage.mkdir()
    assert memstage.stage_restore_in_memory(stage, 1 << 20)
    try:
        source = _source(tmp_path, [], [("count", b"42\n", "")])  # unpacked onto the tmpfs
        apply_to_bundle(source, rootfs, bundle, tmp_path / "c.log")
        asyncio.run(discard(source))
        assert not stage.exists()  # the stage went, its tmpfs unmounted
        images = bundle / archive.CHECKPOINT_DIRECTORY
        assert is_mount_point(images)  # the images live on through the bind alone
        assert (images / "inventory.img").read_bytes() == b"img"
        assert sorted(p.name for p in images.iterdir()) == ["inventory.img"]
    finally:
        memstage.release_bundle_images(bundle)
    assert not is_mount_point(bundle / archive.CHECKPOINT_DIRECTORY)
    memstage.release_bundle_images(bundle)  # twice is fine
    assert memstage.BUNDLE_IMAGES == archive.CHECKPOINT_DIRECTORY


def test_only_a_plain_tar_counts_as_one_whose_size_is_known(tmp_path: Path) -> None:
    plain, packed = tmp_path / "c.tar", tmp_path / "c.tar.gz"
    with tarfile.open(plain, "w") as tar:
        _add(tar, "config.dump", b"{}", link="")
    with tarfile.open(packed, "w:gz") as tar:
        _add(tar, "config.dump", b"{}", link="")
    assert archive.is_plain_tar(plain)
    assert not archive.is_plain_tar(packed)
    assert not archive.is_plain_tar(tmp_path / "absent.tar")
