"""The pod checkpoint archive: written with its container archives, read back checked, refused when broken."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest
from crishim.cri_api import api_pb2
from crishim.runtime.checkpoint import archive, pod_archive
from crishim.runtime.checkpoint.pod import timeout_option
from crishim.runtime.checkpoint.pod_restore import fresh_pod_config
from crishim.runtime.errors import InvalidArgument

IDS = ("a" * 64, "b" * 64)


def _container_archive(path: Path, *, without: str = "") -> Path:
    """A container archive in the CRI-O layout (no real CRIU images: the layout is what is checked)."""
    with tarfile.open(path, "w") as tar:
        if without != archive.CHECKPOINT_DIRECTORY:
            directory = tarfile.TarInfo(archive.CHECKPOINT_DIRECTORY)
            directory.type, directory.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(directory)
            _add(tar, f"{archive.CHECKPOINT_DIRECTORY}/inventory.img", b"\x00" * 64)
        for name in (archive.CONFIG_DUMP, archive.SPEC_DUMP):
            if name != without:
                _add(tar, name, b"{}")
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _dump(names: tuple[str, ...] = ("web", "sidecar")) -> pod_archive.PodDump:
    containers = [
        pod_archive.ArchivedContainer(name, cid, pod_archive.container_member(cid), {"metadata": {"name": name}})
        for name, cid in zip(names, IDS, strict=False)
    ]
    config = {"metadata": {"name": "p", "uid": "u1", "namespace": "ns"}, "log_directory": "/var/log/pods/ns_p_u1"}
    origin = {"format": 1, "architecture": "amd64", "criuVersion": "3.17.1"}
    return pod_archive.PodDump("s" * 64, "runc", config, containers, origin, 1_700_000_000_000_000_000)


def _written(tmp_path: Path, dump: pod_archive.PodDump | None = None, *, without: str = "") -> Path:
    dump = dump or _dump()
    members = [archive.Member(pod_archive.POD_DUMP, data=pod_archive.pod_dump(dump))]
    for container in dump.containers:
        inner = _container_archive(tmp_path / f"{container.id}.tar", without=without)
        members.append(archive.Member(container.member, path=inner))
    location = tmp_path / "pod.tar"
    archive.write_archive(location, members, threading.Event())
    return location


def _unpack(location: Path, dest: Path) -> pod_archive.UnpackedPod:
    dest.mkdir(exist_ok=True)
    return pod_archive.unpack_pod_archive(location, dest, threading.Event())


def test_written_pod_archive_unpacks_with_its_containers_in_order(tmp_path: Path) -> None:
    location = _written(tmp_path)
    with tarfile.open(location) as tar:
        names = set(tar.getnames())
        dumped = tar.extractfile(pod_archive.POD_DUMP)
        assert dumped is not None
        raw = json.loads(dumped.read())
    assert names == {pod_archive.POD_DUMP, *(f"containers/{cid}.tar" for cid in IDS)}
    assert raw["kind"] == pod_archive.KIND
    assert raw["checkpointedTime"] == "2023-11-14T22:13:20Z"
    assert raw["crishim"]["architecture"] == "amd64"

    unpacked = _unpack(location, tmp_path / "out")
    dump = unpacked.dump
    assert [c.name for c in dump.containers] == ["web", "sidecar"]
    assert dump.runtime_handler == "runc"
    assert dump.config["metadata"]["uid"] == "u1"
    assert dump.origin["criuVersion"] == "3.17.1"
    for container in dump.containers:
        inner = unpacked.container_archive(container)
        assert inner == tmp_path / "out" / "containers" / f"{container.id}.tar"
        with tarfile.open(inner) as tar:
            assert archive.CONFIG_DUMP in tar.getnames()


def test_gzip_pod_archive_unpacks(tmp_path: Path) -> None:
    plain = _written(tmp_path)
    packed = tmp_path / "pod.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert len(_unpack(packed, tmp_path / "out").dump.containers) == 2


def _refused(location: Path, dest: Path) -> str:
    dest.mkdir(exist_ok=True)
    with pytest.raises(archive.CorruptArchive) as info:
        pod_archive.unpack_pod_archive(location, dest, threading.Event())
    assert list(dest.iterdir()) == []  # nothing left unpacked
    return str(info.value)


def test_truncated_pod_archive_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    whole = _written(tmp_path).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    assert "not a readable tar archive" in _refused(cut, tmp_path / "out")


def test_garbage_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00garbage" * 1000)
    assert "not a readable tar archive" in _refused(junk, tmp_path / "out")


def test_container_archive_is_not_a_pod_archive(tmp_path: Path) -> None:
    single = _container_archive(tmp_path / "c.tar")
    assert "it has no pod.dump" in _refused(single, tmp_path / "out")


def test_container_archive_lacking_its_images_is_refused_naming_the_container(tmp_path: Path) -> None:
    location = _written(tmp_path, without=archive.CHECKPOINT_DIRECTORY)
    said = _refused(location, tmp_path / "out")
    assert "(container 'web') lacks checkpoint" in said


def test_missing_container_member_is_refused(tmp_path: Path) -> None:
    dump = _dump()
    location = tmp_path / "pod.tar"
    members = [archive.Member(pod_archive.POD_DUMP, data=pod_archive.pod_dump(dump))]
    archive.write_archive(location, members, threading.Event())
    assert f"it lacks containers/{IDS[0]}.tar, the archive of container 'web'" in _refused(location, tmp_path / "out")


def test_member_leaving_the_destination_is_refused(tmp_path: Path) -> None:
    location = tmp_path / "evil.tar"
    with tarfile.open(location, "w") as tar:
        _add(tar, pod_archive.POD_DUMP, pod_archive.pod_dump(_dump()))
        link = tarfile.TarInfo("containers")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    with pytest.raises(archive.CorruptArchive):
        _unpack(location, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"{not json", "pod.dump is not JSON"),
        (b'{"kind": "other"}', "is not a crishim pod checkpoint's"),
        (json.dumps({"kind": pod_archive.KIND, "config": {}, "containers": []}).encode(), "lists no containers"),
        (
            json.dumps(
                {"kind": pod_archive.KIND, "config": {}, "containers": [{"name": "a", "id": "x", "archive": "../x"}]}
            ).encode(),
            "names no archive of the form containers/<id>.tar",
        ),
    ],
    ids=["not json", "another kind", "no containers", "archive outside containers/"],
)
def test_unusable_pod_dump_is_refused_saying_why(data: bytes, said: str) -> None:
    with pytest.raises(archive.CorruptArchive, match=said.replace("(", r"\(").replace(")", r"\)")):
        pod_archive.parse_pod_dump(data)


def test_pod_dump_naming_a_container_twice_is_refused() -> None:
    twice = pod_archive.pod_dump(_dump(("web", "web")))
    with pytest.raises(archive.CorruptArchive, match="names container\\(s\\) web more than once"):
        pod_archive.parse_pod_dump(twice)


def test_timeout_option_is_honoured_and_unknown_options_named() -> None:
    assert timeout_option({}) == 300
    assert timeout_option({"timeout": "40"}) == 40
    with pytest.raises(InvalidArgument, match="options 'leave-running', 'zzz' are not known"):
        timeout_option({"zzz": "1", "leave-running": "true"})
    with pytest.raises(InvalidArgument, match="must be a positive number of seconds"):
        timeout_option({"timeout": "-1"})


def test_restored_pod_without_config_gets_a_new_uid_and_its_own_log_directory() -> None:
    archived = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", uid="u1", namespace="ns", attempt=2),
        labels={"io.kubernetes.pod.uid": "u1", "app": "web"},
        log_directory="/var/log/pods/ns_web_u1",
    )
    fresh = fresh_pod_config(archived)
    uid = fresh.metadata.uid
    assert uid
    assert uid != "u1"
    assert (fresh.metadata.name, fresh.metadata.namespace, fresh.metadata.attempt) == ("web", "ns", 2)
    assert fresh.labels == {"io.kubernetes.pod.uid": uid, "app": "web"}
    assert fresh.log_directory == f"/var/log/pods/ns_web_{uid}"
    assert archived.metadata.uid == "u1"  # the archived config is left as it was

    elsewhere = api_pb2.PodSandboxConfig(metadata=archived.metadata, log_directory="/logs/web/")
    moved = fresh_pod_config(elsewhere)
    assert moved.log_directory == f"/logs/web-{moved.metadata.uid}"
