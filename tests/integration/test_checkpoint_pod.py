"""CheckpointPod and RestorePod on real runc, conmon, CNI and CRIU.

A pod of two counting containers is checkpointed whole, then restored as a new
pod whose counters go on from their checkpointed values while the originals
count on. The refusals (the pod, the output path, the container list, the
options; a missing, corrupt or cut archive; a restore failing once the pod is
made) run on every node and leave nothing behind: no archive, no pod, no netns,
no staging. The checkpoints themselves need CRIU (needs_criu: the node VM).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.oci.mounttable import mount_points

from tests.integration import test_checkpoint
from tests.integration.test_checkpoint import (
    CALL_TIMEOUT,
    COUNTER,
    _count,
    _start_holder,
    _synthetic_archive,
    kill9_while_criu_restores,
    needs_criu,
)
from tests.support.cri import (
    container_config,
    container_status,
    eventually,
    list_pods,
    pod_config,
    pod_status,
    pull_test_image,
    refusal,
    remove_pod,
    run_pod,
    start_container,
    stop_pod,
)
from tests.support.daemon import Daemon, running_daemon
from tests.support.images import TestImages

pytestmark = pytest.mark.root

own_daemon = test_checkpoint.own_daemon  # a daemon of the test's own, which it kills

NAMES = ("first", "second")


def _checkpoint_pod(
    daemon: Daemon, sid: str, output: Path | str, ids: list[str] | None = None, options: dict[str, str] | None = None
) -> None:
    request = pb.CheckpointPodRequest(
        pod_sandbox_id=sid, output_path=str(output), container_ids=ids or [], options=options or {}
    )
    daemon.runtime.CheckpointPod(request, timeout=CALL_TIMEOUT)


def _restore_pod(daemon: Daemon, location: Path | str, **fields: Any) -> pb.RestorePodResponse:
    request = pb.RestorePodRequest(checkpoint_path=str(location), **fields)
    return daemon.runtime.RestorePod(request, timeout=CALL_TIMEOUT * 2)


@pytest.fixture(scope="module")
def pod(live_daemon: Daemon) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    sid, config = run_pod(live_daemon, "ckpod", handler="runc")  # CRIU through runc
    yield sid, config
    remove_pod(live_daemon, sid)


@pytest.fixture(scope="module")
def counters(live_daemon: Daemon, busybox: str, pod: tuple[str, pb.PodSandboxConfig]) -> dict[str, str]:
    sid, config = pod
    ids = {
        name: start_container(live_daemon, sid, config, container_config(name, busybox, ["sh", "-c", COUNTER]))
        for name in NAMES
    }
    for name, cid in ids.items():
        _counts_past(live_daemon, cid, 2, f"counter {name}")
    return ids


@pytest.fixture(scope="module")
def other_pod(live_daemon: Daemon, busybox: str) -> Iterator[tuple[str, str]]:
    sid, config = run_pod(live_daemon, "ckpod-other", handler="runc")
    cid = start_container(live_daemon, sid, config, container_config("sleeper", busybox, ["sleep", "600"]))
    yield sid, cid
    remove_pod(live_daemon, sid)


def _netns(daemon: Daemon) -> set[str]:
    directory = daemon.dir / "run" / "netns"
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


def _leftovers(daemon: Daemon) -> tuple[set[str], set[str], set[str], list[Path]]:
    """What a refused restore must not change: pods, containers, pinned netns, and no staging."""
    pods = {p.id for p in list_pods(daemon)}
    containers = {c.id for c in daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers}
    staging = list((daemon.root / "containers").glob(".restore-*"))
    return pods, containers, _netns(daemon), staging


def _nothing_left(daemon: Daemon, before: tuple[set[str], set[str], set[str], list[Path]]) -> None:
    after = _leftovers(daemon)
    assert after[:3] == before[:3]
    assert after[3] == []


# -- CheckpointPod's refusals, on every node ------------------------------------------------------


def test_unknown_pod_is_not_found(live_daemon: Daemon, tmp_path: Path) -> None:
    error = refusal(lambda: _checkpoint_pod(live_daemon, "f" * 64, tmp_path / "p.tar"))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert list(tmp_path.iterdir()) == []


def test_pod_that_is_not_ready_is_refused(live_daemon: Daemon, tmp_path: Path) -> None:
    sid, _ = run_pod(live_daemon, "ckpod-stopped", handler="runc")
    try:
        stop_pod(live_daemon, sid)
        error = refusal(lambda: _checkpoint_pod(live_daemon, sid, tmp_path / "p.tar"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert f"pod sandbox {sid} is not ready" in error.details()
        assert list(tmp_path.iterdir()) == []
    finally:
        remove_pod(live_daemon, sid)


@pytest.mark.parametrize("kind", ["missing directory", "symlink", "relative", "directory", "empty"])
def test_unusable_output_path_is_invalid_argument(
    live_daemon: Daemon, pod: tuple[str, pb.PodSandboxConfig], counters: dict[str, str], tmp_path: Path, kind: str
) -> None:
    output = {
        "missing directory": str(tmp_path / "absent" / "p.tar"),
        "symlink": str(tmp_path / "link.tar"),
        "relative": "p.tar",
        "directory": str(tmp_path / "dir.tar"),
        "empty": "",
    }[kind]
    if kind == "symlink":
        (tmp_path / "link.tar").symlink_to(tmp_path / "target.tar")
    if kind == "directory":
        (tmp_path / "dir.tar").mkdir()
    error = refusal(lambda: _checkpoint_pod(live_daemon, pod[0], output))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith("output_path "), error.details()
    assert not (tmp_path / "target.tar").exists()
    assert all(container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING for cid in counters.values())


def test_container_of_another_pod_is_invalid_argument(
    live_daemon: Daemon, pod: tuple[str, pb.PodSandboxConfig], counters: dict[str, str],
    other_pod: tuple[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    other_sid, other_cid = other_pod
    error = refusal(lambda: _checkpoint_pod(live_daemon, pod[0], tmp_path / "p.tar", [counters["first"], other_cid]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"container {other_cid} is in pod sandbox {other_sid}, not in {pod[0]}" in error.details()
    assert list(tmp_path.iterdir()) == []


def test_unknown_container_is_not_found(
    live_daemon: Daemon, pod: tuple[str, pb.PodSandboxConfig], counters: dict[str, str], tmp_path: Path
) -> None:
    error = refusal(lambda: _checkpoint_pod(live_daemon, pod[0], tmp_path / "p.tar", ["e" * 64]))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert list(tmp_path.iterdir()) == []


def test_unknown_option_is_invalid_argument_naming_it(
    live_daemon: Daemon, pod: tuple[str, pb.PodSandboxConfig], counters: dict[str, str], tmp_path: Path
) -> None:
    error = refusal(lambda: _checkpoint_pod(live_daemon, pod[0], tmp_path / "p.tar", options={"compress": "zstd"}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "options 'compress' are not known" in error.details()
    assert list(tmp_path.iterdir()) == []


def test_what_a_killed_pod_checkpoint_left_is_removed_at_start_up(tmp_path: Path) -> None:
    """A daemon killed mid-CheckpointPod leaves its stage in the pod's directory and a partial
    pod archive beside output_path (both made here as it makes them); the next start removes them."""
    with running_daemon() as daemon:
        sid, _ = run_pod(daemon, "ckpod-killed")
        stage = daemon.root / "sandboxes" / sid / ".checkpoint-interrupted"
        stage.mkdir()
        (stage / "aaaa.tar").write_bytes(b"a container's archive")
        partial = tmp_path / ".pod.tar.checkpoint-interrupted.partial"
        partial.write_bytes(b"half a pod archive")
        (stage / "archive.partial").write_text(str(partial))
        daemon.kill9()
        daemon.start()
        assert not stage.exists()
        assert not partial.exists()
        assert pod_status(daemon, sid).status.state == pb.SANDBOX_READY  # the pod itself is left alone


def test_the_pod_of_a_killed_pod_restore_is_removed_at_start_up(test_images: TestImages) -> None:
    """A daemon killed mid-RestorePod leaves its stage naming the pod it made (made here as
    RestorePod makes it): the caller never got that pod's ID, so the next start removes the pod,
    its running container, its netns and the stage."""
    with running_daemon() as daemon:
        image = pull_test_image(daemon, test_images)
        sid, config = run_pod(daemon, "ckpod-restore-killed")
        cid = start_container(daemon, sid, config, container_config("sleeper", image, ["sleep", "600"]))
        kept, kept_config = run_pod(daemon, "ckpod-restore-kept")
        stage = daemon.root / "containers" / ".restore-pod-interrupted"
        stage.mkdir()
        (stage / "pod").write_text(sid)
        netns_before = _netns(daemon)
        daemon.kill9()
        daemon.start()
        assert {p.id for p in list_pods(daemon)} == {kept}
        assert not daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers
        assert not stage.exists()
        assert len(_netns(daemon)) == len(netns_before) - 1
        assert not (daemon.root / "containers" / cid).exists()
        assert subprocess.run(["pgrep", "-f", f"conmon.*{cid}"], capture_output=True).returncode == 1
        assert pod_status(daemon, kept).status.state == pb.SANDBOX_READY  # other pods are left alone
        remove_pod(daemon, kept)


# -- RestorePod's refusals, on every node ---------------------------------------------------------


def test_restore_from_a_missing_archive_is_not_found(live_daemon: Daemon, tmp_path: Path) -> None:
    before = _leftovers(live_daemon)
    location = tmp_path / "absent.tar"
    error = refusal(lambda: _restore_pod(live_daemon, location))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert f"pod checkpoint archive {str(location)!r} does not exist" in error.details()
    _nothing_left(live_daemon, before)


def _synthetic_pod_archive(location: Path, base_image: str, names: tuple[str, ...] = NAMES) -> Path:
    """A pod archive whose containers' archives have no real CRIU images: every check before CRIU passes."""
    ids = {name: f"{i:064x}" for i, name in enumerate(names, start=1)}
    dump = {
        "kind": "crishim-pod-checkpoint",
        "podSandboxId": "d" * 64,
        "runtimeHandler": "runc",
        "config": {"metadata": {"name": "synthetic", "uid": "uid-synthetic", "namespace": "test"},
                   "log_directory": str(location.parent / "logs")},
        "containers": [
            {"name": name, "id": cid, "archive": f"containers/{cid}.tar",
             "config": {"metadata": {"name": name}, "image": {"image": base_image}, "log_path": f"{name}.log"}}
            for name, cid in ids.items()
        ],
    }  # fmt: skip
    with tarfile.open(location, "w") as tar:
        data = json.dumps(dump).encode()
        info = tarfile.TarInfo("pod.dump")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for cid in ids.values():
            inner = _synthetic_archive(location.parent / f"{cid}.tar", base_image)
            tar.add(inner, arcname=f"containers/{cid}.tar")
    return location


@pytest.mark.parametrize("kind", ["not a tar", "truncated", "a container archive", "no container images"])
def test_restore_from_a_corrupt_archive_is_invalid_argument_and_makes_nothing(
    live_daemon: Daemon, busybox: str, tmp_path: Path, kind: str
) -> None:
    before = _leftovers(live_daemon)
    location = tmp_path / "bad.tar"
    if kind == "not a tar":
        location.write_bytes(b"\x00garbage" * 1000)
    elif kind == "truncated":
        data = _synthetic_pod_archive(tmp_path / "whole.tar", busybox).read_bytes()
        location.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "a container archive":
        _synthetic_archive(location, busybox)
    else:
        whole = _synthetic_pod_archive(tmp_path / "whole.tar", busybox)
        with tarfile.open(whole) as src, tarfile.open(location, "w") as dst:
            for member in src:
                if member.name.startswith("containers/"):
                    inner = tarfile.open(fileobj=src.extractfile(member))
                    cut = io.BytesIO()
                    with tarfile.open(fileobj=cut, mode="w") as out:
                        for item in inner:
                            if item.name != "checkpoint":
                                out.addfile(item, inner.extractfile(item) if item.isfile() else None)
                    member.size = len(cut.getvalue())
                    dst.addfile(member, io.BytesIO(cut.getvalue()))
                else:
                    dst.addfile(member, src.extractfile(member))
    error = refusal(lambda: _restore_pod(live_daemon, location))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "is not a usable pod checkpoint archive" in error.details()
    _nothing_left(live_daemon, before)


def test_container_config_naming_no_archived_container_is_invalid_argument(
    live_daemon: Daemon, busybox: str, tmp_path: Path
) -> None:
    before = _leftovers(live_daemon)
    location = _synthetic_pod_archive(tmp_path / "pod.tar", busybox)
    stray = container_config("stray", busybox, ["true"])
    error = refusal(lambda: _restore_pod(live_daemon, location, container_configs=[stray]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "container_configs name 'stray', which checkpoint" in error.details()
    _nothing_left(live_daemon, before)


@pytest.mark.parametrize("compression", ["plain", "zstd"])
def test_restore_failing_once_the_pod_is_made_removes_the_pod(
    live_daemon: Daemon, busybox: str, tmp_path: Path, compression: str
) -> None:
    """No real CRIU images: the pod is made, then its first container's restore fails (at create
    where criu check fails, at start where it passes), and everything made goes. A zstd pod
    archive (as an engine's export may be compressed) is read as far as a plain one."""
    before = _leftovers(live_daemon)
    location = _synthetic_pod_archive(tmp_path / "pod.tar", busybox)
    if compression == "zstd":
        import zstandard

        packed = tmp_path / "pod.tar.zst"
        packed.write_bytes(zstandard.ZstdCompressor().compress(location.read_bytes()))
        location = packed
    error = refusal(lambda: _restore_pod(live_daemon, location))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    _nothing_left(live_daemon, before)
    assert not [p for p in list_pods(live_daemon) if p.metadata.name == "synthetic"]


# -- the checkpoint and the restore, where CRIU works ---------------------------------------------


def _pod_dump(location: Path) -> dict[str, Any]:
    with tarfile.open(location) as tar:
        dumped = tar.extractfile("pod.dump")
        assert dumped is not None
        value: dict[str, Any] = json.loads(dumped.read())
        return value


def _archived_counts(location: Path) -> dict[str, int]:
    """Each container's count at the checkpoint, from its archive's writable layer."""
    counts = {}
    with tarfile.open(location) as tar:
        for entry in _pod_dump(location)["containers"]:
            inner = tarfile.open(fileobj=tar.extractfile(entry["archive"]))
            diff = tarfile.open(fileobj=inner.extractfile("rootfs-diff.tar"))
            count = diff.extractfile("count")
            assert count is not None
            counts[entry["name"]] = int(count.read())
    return counts


def _counts_past(daemon: Daemon, cid: str, value: int, what: str) -> None:
    eventually(lambda: _count(daemon, cid), lambda n: n > value, what=f"{what} to count past {value}")


def test_pod_is_checkpointed_and_restored_as_a_new_pod_counting_on(
    live_daemon: Daemon, pod: tuple[str, pb.PodSandboxConfig], counters: dict[str, str], tmp_path: Path
) -> None:
    needs_criu()
    sid, config = pod
    location = tmp_path / "pod.tar"
    _checkpoint_pod(live_daemon, sid, location)

    # One archive, nothing half-written beside it; the originals run on.
    assert [p.name for p in tmp_path.iterdir()] == [location.name]
    with tarfile.open(location) as tar:
        assert set(tar.getnames()) == {"pod.dump", *(f"containers/{cid}.tar" for cid in counters.values())}
    dump = _pod_dump(location)
    assert dump["podSandboxId"] == sid
    assert dump["runtimeHandler"] == "runc"
    assert [c["name"] for c in dump["containers"]] == list(NAMES)
    assert dump["config"]["metadata"]["uid"] == config.metadata.uid
    assert dump["crishim"]["format"] == 1
    at_checkpoint = _archived_counts(location)
    for name, cid in counters.items():
        assert container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING
        _counts_past(live_daemon, cid, at_checkpoint[name], f"original counter {name}")

    restored = _restore_pod(live_daemon, location)
    new_sid = restored.pod_sandbox_id
    try:
        assert new_sid
        assert new_sid != sid
        status = pod_status(live_daemon, new_sid).status
        assert status.state == pb.SANDBOX_READY
        # The same pod name, as a new pod: a UID of its own, so it is never taken for the original's.
        assert status.metadata.name == config.metadata.name
        assert status.metadata.uid != config.metadata.uid
        assert status.runtime_handler == "runc"
        new_ids = {c.name: c.container_id for c in restored.restored_containers}
        assert list(new_ids) == list(NAMES)
        assert not set(new_ids.values()) & set(counters.values())
        for name, cid in new_ids.items():
            state = container_status(live_daemon, cid)
            assert state.state == pb.CONTAINER_RUNNING, state
            # Restored from memory: each counter goes on from its checkpointed value, not from 1.
            first = _count(live_daemon, cid)
            assert first >= at_checkpoint[name], (name, first, at_checkpoint[name])
            _counts_past(live_daemon, cid, first, f"restored counter {name}")
        listed = live_daemon.runtime.ListContainers(
            pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=new_sid)), timeout=30
        ).containers
        assert {c.id for c in listed} == set(new_ids.values())
        # The originals were not touched.
        assert all(container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING for cid in counters.values())
        assert pod_status(live_daemon, sid).status.state == pb.SANDBOX_READY
    finally:
        remove_pod(live_daemon, new_sid)
    assert not list((live_daemon.root / "containers").glob(".restore-*"))
    assert not list((live_daemon.root / "sandboxes" / sid).glob(".checkpoint-*"))  # the pod's staging went


def test_chosen_container_restored_into_the_callers_pod_with_its_config(
    live_daemon: Daemon, pod: tuple[str, pb.PodSandboxConfig], counters: dict[str, str], tmp_path: Path
) -> None:
    needs_criu()
    sid, _ = pod
    location = tmp_path / "second.tar"
    _checkpoint_pod(live_daemon, sid, location, [counters["second"]], options={"timeout": "120"})
    assert [c["name"] for c in _pod_dump(location)["containers"]] == ["second"]
    at_checkpoint = _archived_counts(location)["second"]

    own = pod_config("ckpod-given", live_daemon)
    override = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="second"), image=pb.ImageSpec(image="ignored"),
        log_path="second.log", labels={"restored": "yes"},
    )  # fmt: skip
    restored = _restore_pod(live_daemon, location, config=own, container_configs=[override])
    try:
        status = pod_status(live_daemon, restored.pod_sandbox_id).status
        assert (status.metadata.name, status.metadata.uid) == ("ckpod-given", own.metadata.uid)
        [entry] = restored.restored_containers
        assert entry.name == "second"
        state = container_status(live_daemon, entry.container_id)
        assert state.state == pb.CONTAINER_RUNNING, state
        assert state.labels["restored"] == "yes"
        assert _count(live_daemon, entry.container_id) >= at_checkpoint
        assert (Path(own.log_directory) / "second.log").is_file()
    finally:
        remove_pod(live_daemon, restored.pod_sandbox_id)


def test_kill9_mid_pod_restore_removes_the_unanswered_pod(own_daemon: tuple[Daemon, str], tmp_path: Path) -> None:
    needs_criu()
    daemon, image = own_daemon
    sid, config = run_pod(daemon, "ckpod-kill9", handler="runc")
    try:
        _start_holder(daemon, sid, config, image)
        location = tmp_path / "pod.tar"
        _checkpoint_pod(daemon, sid, location)
        # CRIU reading the holder's pages back, in the pod the call made: the daemon dies then.
        kill9_while_criu_restores(daemon, lambda: _restore_pod(daemon, location))
        # The restarted daemon removed the pod RestorePod never answered with, and all it held.
        assert [p.id for p in list_pods(daemon)] == [sid]
        containers = daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers
        assert {c.pod_sandbox_id for c in containers} == {sid}
        assert not list((daemon.root / "containers").glob(".restore-*"))
        assert len(_netns(daemon)) == 1
        # No bind of a rootfs that a killed `runc restore` made for CRIU outlives its container.
        assert [m for m in mount_points() if m.startswith(f"{daemon.dir}/run/runc/")] == []
    finally:
        remove_pod(daemon, sid)
