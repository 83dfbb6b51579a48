"""critest "Container runtime": container lifecycle, exec, stats, volumes and logs."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root


@pytest.fixture
def pod(daemon: Daemon) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    """critest's CreatePodSandboxForContainer, cleaned up after the test."""
    with critest.default_pod(daemon) as created:
        yield created


def _listed(daemon: Daemon, cid: str) -> bool:
    return any(c.id == cid for c in cri.list_containers(daemon, pb.ContainerFilter(id=cid)))


def _stats(daemon: Daemon, filter: pb.ContainerStatsFilter | None) -> list[pb.ContainerStats]:
    req = pb.ListContainerStatsRequest()
    if filter is not None:
        req.filter.CopyFrom(filter)
    return list(daemon.runtime.ListContainerStats(req, timeout=cri.CALL_TIMEOUT).stats)


def _has_stats(stats: list[pb.ContainerStats], cid: str) -> bool:
    return any(s.attributes.id == cid for s in stats)


def test_created_container_is_listed(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support creating container [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-create-")
    assert _listed(daemon, cid)


def test_container_status_and_list_preserve_attributes(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support preserving container attributes [Conformance]"""
    pod_id, cfg = pod
    config = critest.container_config("container-with-attributes-", command=None)
    config.ClearField("linux")  # critest sends no Linux config here
    name = config.metadata.name
    labels = {
        "foo": "bar",
        "io.kubernetes.container.name": name,
        "io.kubernetes.pod.name": "fake-pod-name",
        "io.kubernetes.pod.namespace": "fake-pod-namespace",
        "io.kubernetes.pod.uid": "fake-pod-uid",
    }
    annotations = {"abc": "def"}
    config.labels.update(labels)
    config.annotations.update(annotations)
    cid = critest.create_container(daemon, pod_id, cfg, config)
    status = cri.container_status(daemon, cid)
    listed = cri.list_containers(daemon, pb.ContainerFilter(id=cid))
    assert len(listed) == 1
    for got in (status, listed[0]):
        assert (got.metadata.name, got.metadata.attempt) == (name, critest.DEFAULT_ATTEMPT)
        assert labels.items() <= dict(got.labels).items()
        assert annotations.items() <= dict(got.annotations).items()


def test_started_container_is_running(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support starting container [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-start-test-")
    critest.start_and_wait_running(daemon, cid)


def test_stopped_container_is_exited(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support stopping container [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-stop-test-")
    cri.start(daemon, cid)
    began = time.monotonic()
    critest.stop_and_wait_exited(daemon, cid)
    # critest fails a stop that outlives its 60 s grace period.
    assert time.monotonic() - began < cri.STOP_GRACE


def test_remove_created_container(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support removing created container [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_pause_container(daemon, pod_id, cfg, "container-for-remove-created-test-")
    cri.remove_container(daemon, cid)
    assert not _listed(daemon, cid)


def test_remove_running_container(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support removing running container [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_pause_container(daemon, pod_id, cfg, "container-for-remove-running-test-")
    cri.start(daemon, cid)
    cri.remove_container(daemon, cid)
    assert not _listed(daemon, cid)


def test_remove_stopped_container(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support removing stopped container [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_pause_container(daemon, pod_id, cfg, "container-for-remove-stopped-test-")
    cri.start(daemon, cid)
    critest.stop_and_wait_exited(daemon, cid)
    cri.remove_container(daemon, cid)
    assert not _listed(daemon, cid)


def test_exec_sync_returns_stdout(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support execSync [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-execSync-test-")
    cri.start(daemon, cid)
    assert critest.exec_ok(daemon, cid, ["echo", "-n", "hello"]) == "hello"


def test_exec_sync_timeout_fails_and_kills_the_process(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support execSync with timeout [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-execSync-timeout-test-")
    cri.start(daemon, cid)
    # critest's client asks for a 1 s timeout and gives the call its own timeout on top,
    # so the answer is the runtime's: the exec ran out of time and was killed.
    cri.assert_refused(
        lambda: cri.exec_sync(daemon, cid, ["sleep", "4321"], timeout=1),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"exec in container {cid} did not finish within 1.0s; the process was killed",
    )
    # The intent, checked without relying on the image: no `sleep` process is left.
    scan = 'for f in /proc/[0-9]*/comm; do read c < $f 2>/dev/null && [ "$c" = sleep ] && echo $f; done; true'
    left = cri.exec_sync(daemon, cid, ["sh", "-c", scan])
    assert left.stdout.strip() == b"", f"the timed-out exec is still running: {left.stdout!r}"
    # critest's own check, which needs a pgrep in the image.
    resp = cri.exec_sync(daemon, cid, ["sh", "-c", "pgrep sleep || true"])
    assert resp.exit_code == 0
    assert b"pgrep: not found" not in resp.stderr, "the busybox test image has no pgrep applet"
    assert resp.stderr == b""
    assert resp.stdout.strip() == b"", f"the timed-out exec is still running: pids {resp.stdout!r}"


def test_container_stats_by_id(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support listing container stats [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-stats-")
    cri.start(daemon, cid)
    stats = daemon.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=cri.CALL_TIMEOUT).stats
    assert stats.attributes.id == cid
    assert "container-for-stats-" in stats.attributes.metadata.name
    assert stats.cpu.timestamp != 0
    assert stats.memory.timestamp != 0


def test_list_stats_filtered_by_id(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support listing stats for started containers [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-stats-")
    cri.start(daemon, cid)
    assert _has_stats(_stats(daemon, pb.ContainerStatsFilter(id=cid)), cid)


def test_list_stats_without_filter(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support listing stats for started containers when filter is nil [Conformance]"""
    pod_id, cfg = pod
    cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-stats-with-nil-filter-")
    cri.start(daemon, cid)
    assert _has_stats(_stats(daemon, None), cid)


def test_list_stats_of_three_containers_without_filter(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support listing stats for three created containers when filter is nil. [Conformance]"""
    pod_id, cfg = pod
    cids = [
        critest.create_default_container(daemon, pod_id, cfg, "container-for-stats-with-nil-filter-") for _ in range(3)
    ]
    for cid in cids:
        cri.start(daemon, cid)
    stats = _stats(daemon, None)
    for cid in cids:
        assert _has_stats(stats, cid), cid


def test_list_stats_filtered_by_labels(daemon: Daemon, pod) -> None:
    """[k8s.io] Container runtime should support basic operations on container
    runtime should support listing stats for containers filtered by labels [Conformance]"""
    pod_id, cfg = pod
    labels = {"foo": "bar"}
    cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-stats-with-labels-", labels)
    cri.start(daemon, cid)
    assert _has_stats(_stats(daemon, pb.ContainerStatsFilter(label_selector=labels)), cid)
    assert not _has_stats(_stats(daemon, pb.ContainerStatsFilter(label_selector={"foo": "baz"})), cid)


@pytest.fixture
def host_path(pod) -> Iterator[str]:
    """critest's createHostPath: a temp dir holding one flag file."""
    path = tempfile.mkdtemp(prefix="test" + pod[0])
    Path(path, "testVolume.file").touch()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _volume_container(daemon: Daemon, pod, prefix: str, path: str) -> str:
    pod_id, cfg = pod
    mount = pb.Mount(host_path=path, container_path=path, selinux_relabel=True)
    config = critest.container_config(prefix, command=critest.PAUSE_COMMAND, mounts=[mount])
    config.ClearField("linux")  # critest's volume container has no Linux config
    cid = critest.create_container(daemon, pod_id, cfg, config)
    critest.start_and_wait_running(daemon, cid)
    return cid


def test_container_with_volume_sees_host_files(daemon: Daemon, pod, host_path: str) -> None:
    """[k8s.io] Container runtime should support adding volume and device
    runtime should support starting container with volume [Conformance]"""
    cid = _volume_container(daemon, pod, "container-with-volume-test-", host_path)
    assert critest.exec_ok(daemon, cid, ["ls", "-A", host_path]) != ""


def test_container_with_symlinked_volume_sees_host_files(daemon: Daemon, pod, host_path: str) -> None:
    """[k8s.io] Container runtime should support adding volume and device
    runtime should support starting container with volume when host path is a symlink [Conformance]"""
    link = host_path + "-symlink"
    os.symlink(host_path, link)
    try:
        cid = _volume_container(daemon, pod, "container-with-symlink-host-path-test-", link)
        assert critest.exec_ok(daemon, cid, ["ls", "-A", link]) != ""
    finally:
        os.unlink(link)


@pytest.fixture
def log_pod(daemon: Daemon) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    """critest's createPodSandboxWithLogDirectory: a pod whose log directory is a fresh temp dir."""
    with critest.pod_with_log_directory(daemon) as created:
        yield created


def _log_entries(cfg: pb.PodSandboxConfig, log_path: str) -> list[tuple[str, str, str, str]]:
    return cri.parse_cri_log(Path(cfg.log_directory, log_path).read_text())


def test_container_output_goes_to_its_cri_log(daemon: Daemon, log_pod) -> None:
    """[k8s.io] Container runtime should support log
    runtime should support starting container with log [Conformance]"""
    pod_id, cfg = log_pod
    config = critest.container_config("container-with-log-test-", command=["echo", critest.DEFAULT_LOG])
    config.ClearField("linux")
    config.log_path = config.metadata.name + ".log"
    cid = critest.create_container(daemon, pod_id, cfg, config)
    cri.start(daemon, cid)
    cri.wait_state(daemon, cid, pb.CONTAINER_EXITED)
    entries = _log_entries(cfg, config.log_path)
    assert ("stdout", critest.DEFAULT_LOG) in [(stream, content) for _, stream, _, content in entries], entries


def test_reopen_container_log_starts_a_new_file(daemon: Daemon, log_pod) -> None:
    """[k8s.io] Container runtime should support log
    runtime should support reopening container log [Conformance]"""
    pod_id, cfg = log_pod
    loop = f"while true; do echo {critest.DEFAULT_LOG}; sleep 1; done"
    config = critest.container_config("container-reopen-log-test-", command=["sh", "-c", loop])
    config.ClearField("linux")
    config.log_path = config.metadata.name + ".log"
    cid = critest.create_container(daemon, pod_id, cfg, config)
    cri.start(daemon, cid)
    log = Path(cfg.log_directory, config.log_path)
    cri.eventually(
        lambda: log.exists() and _log_entries(cfg, config.log_path), bool, timeout=60, what="first container log lines"
    )
    moved = log.with_name(log.name + ".new")
    log.rename(moved)
    daemon.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=cri.CALL_TIMEOUT)
    assert log.exists(), "ReopenContainerLog did not create a new log file"
    cri.eventually(lambda: _log_entries(cfg, config.log_path), bool, timeout=60, what="lines in the reopened log")
    old_length = len(cri.parse_cri_log(moved.read_text()))
    # critest watches the renamed file for 5 s. The container writes a line a second: three
    # more lines in the new file are three writes that did not go to the renamed one.
    reopened = len(_log_entries(cfg, config.log_path))
    cri.eventually(
        lambda: len(_log_entries(cfg, config.log_path)),
        lambda lines: lines >= reopened + 3,
        timeout=60,
        what="three more lines in the reopened log",
    )
    assert len(cri.parse_cri_log(moved.read_text())) == old_length, "the renamed log is still written"
