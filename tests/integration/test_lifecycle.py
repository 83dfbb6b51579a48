"""Pods and containers end to end on real runc/crun and conmon."""

from __future__ import annotations

import os
import re
import time
from functools import partial
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import (
    PULL_TIMEOUT,
    code_of,
    container_config,
    container_status,
    eventually,
    pod_config,
    refusal,
    remove_pod,
    run_pod,
    start_container,
    wait_exited,
)
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

CRI_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) (stdout|stderr) (P|F) (.*)$")


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_container_runs_logs_and_exits_with_its_code(live_daemon: Daemon, busybox: str, handler: str) -> None:
    rt = live_daemon.runtime
    config = pod_config(f"exit-{handler}", live_daemon, hostname="web-7")
    sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=60).pod_sandbox_id
    try:
        sandbox = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=10).status
        assert sandbox.state == pb.SANDBOX_READY
        assert sandbox.runtime_handler == handler
        assert sandbox.network.ip
        cmd = ["sh", "-c", "echo out; echo err >&2; hostname; exit 3"]
        cid = start_container(live_daemon, sid, config, container_config("app", busybox, cmd))
        status = wait_exited(live_daemon, cid)
        assert status.state == pb.CONTAINER_EXITED
        assert status.exit_code == 3
        assert status.reason == "Error"
        assert status.started_at > status.created_at
        assert status.finished_at >= status.started_at
        lines = Path(status.log_path).read_text().splitlines()
        parsed = [CRI_LOG_LINE.match(line) for line in lines]
        assert all(parsed), lines
        # stdout and stderr are two pipes: conmon keeps each one's order, not the order between them.
        by_stream = {
            stream: [m.group(4) for m in parsed if m and m.group(2) == stream] for stream in ("stdout", "stderr")
        }
        assert by_stream == {"stdout": ["out", "web-7"], "stderr": ["err"]}, lines
    finally:
        remove_pod(live_daemon, sid)


def test_completed_reason_and_image_identity(live_daemon: Daemon, busybox: str) -> None:
    rt = live_daemon.runtime
    pulled = live_daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=busybox)), timeout=PULL_TIMEOUT)
    sid, config = run_pod(live_daemon, "identity")
    try:
        cid = start_container(live_daemon, sid, config, container_config("ok", busybox, ["true"]))
        status = wait_exited(live_daemon, cid)
        assert status.exit_code == 0
        assert status.reason == "Completed"
        assert status.image_id == pulled.image_ref
        listed = rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(id=cid)), timeout=10).containers
        assert listed[0].image_id == pulled.image_ref
        image = live_daemon.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=busybox)), timeout=10)
        assert image.image.id == pulled.image_ref
        assert status.image_ref in image.image.repo_digests
    finally:
        remove_pod(live_daemon, sid)


def test_long_lines_are_split_with_partial_tags(live_daemon: Daemon, busybox: str) -> None:
    sid, config = run_pod(live_daemon, "longline")
    try:
        cmd = ["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' a; echo"]
        cid = start_container(live_daemon, sid, config, container_config("long", busybox, cmd))
        status = wait_exited(live_daemon, cid)
        lines = Path(status.log_path).read_text().splitlines()
        matches = [CRI_LOG_LINE.match(line) for line in lines]
        parsed = [m for m in matches if m is not None]
        assert len(parsed) == len(lines), lines
        tags = [m.group(3) for m in parsed]
        assert tags[-1] == "F"
        assert "P" in tags
        assert sum(len(m.group(4)) for m in parsed) == 20000
    finally:
        remove_pod(live_daemon, sid)


def test_exec_sync_output_exit_code_and_timeout(live_daemon: Daemon, busybox: str) -> None:
    rt = live_daemon.runtime
    sid, config = run_pod(live_daemon, "execsync")
    try:
        cid = start_container(live_daemon, sid, config, container_config("sleeper", busybox, ["sleep", "1000"]))
        answer = rt.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo o; echo e >&2; exit 4"], timeout=10), timeout=20
        )
        assert (answer.stdout, answer.stderr, answer.exit_code) == (b"o\n", b"e\n", 4)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "60"], timeout=1), timeout=20)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert info.value.details() == f"exec in container {cid} did not finish within 1.0s; the process was killed"
        assert time.monotonic() - started < 10

        def processes() -> list[str]:
            ps = rt.ExecSync(
                pb.ExecSyncRequest(container_id=cid, cmd=["ps", "-o", "pid,stat,args"], timeout=10), timeout=20
            )
            return ps.stdout.decode().splitlines()[1:]

        # The timed-out process was killed, and reaped by the pod's init: no `sleep 60`, no zombie.
        eventually(
            processes,
            lambda lines: not any("sleep 60" in line or line.split()[1].startswith("Z") for line in lines),
            timeout=10,
            what="the timed-out exec gone",
        )
    finally:
        remove_pod(live_daemon, sid)


def test_stop_escalates_to_sigkill_after_the_timeout(live_daemon: Daemon, busybox: str) -> None:
    rt = live_daemon.runtime
    sid, config = run_pod(live_daemon, "stopper")
    try:
        cmd = ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]
        cid = start_container(live_daemon, sid, config, container_config("stubborn", busybox, cmd))
        # Wait until the shell ignores SIGTERM (bit 15 of SigIgn), or the test races its `trap`.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # The pod shares one PID namespace (CRI's default POD mode): look at every process.
            scan = "for s in /proc/[0-9]*/status; do grep '^SigIgn' $s; done"
            status = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", scan], timeout=5))
            masks = [int(line.split()[1], 16) for line in status.stdout.decode().splitlines()]
            if any(mask & (1 << 14) for mask in masks):
                break
            time.sleep(0.05)
        started = time.monotonic()
        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=2), timeout=30)
        elapsed = time.monotonic() - started
        status = container_status(live_daemon, cid)
        assert status.state == pb.CONTAINER_EXITED
        assert status.exit_code == 137
        assert 1.5 < elapsed < 10
        # Stopping again, and stopping with timeout 0, both succeed.
        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    finally:
        remove_pod(live_daemon, sid)


def test_idempotent_stop_and_remove_of_missing_objects(live_daemon: Daemon) -> None:
    rt = live_daemon.runtime
    missing = "f" * 64
    rt.StopContainer(pb.StopContainerRequest(container_id=missing), timeout=10)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=missing), timeout=10)
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=missing), timeout=10)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=missing), timeout=10)


def test_bad_input_gets_the_right_codes(live_daemon: Daemon, busybox: str) -> None:
    rt = live_daemon.runtime
    assert (
        code_of(rt.RunPodSandbox, pb.RunPodSandboxRequest(config=pb.PodSandboxConfig()))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code_of(rt.RunPodSandbox, pb.RunPodSandboxRequest(config=pod_config("h", live_daemon), runtime_handler="kata"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    sid, config = run_pod(live_daemon, "badinput")
    try:
        with pytest.raises(grpc.RpcError) as dup:
            rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
        assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert sid in dup.value.details()
        unpulled = container_config("x", "127.0.0.1:1/never/pulled:1", ["true"])
        with pytest.raises(grpc.RpcError) as info:
            rt.CreateContainer(
                pb.CreateContainerRequest(pod_sandbox_id=sid, config=unpulled, sandbox_config=config), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "pull" in info.value.details()
        assert (
            code_of(
                rt.CreateContainer,
                pb.CreateContainerRequest(
                    pod_sandbox_id=sid,
                    config=pb.ContainerConfig(image=pb.ImageSpec(image=busybox)),
                    sandbox_config=config,
                ),
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        assert (
            code_of(
                rt.CreateContainer,
                pb.CreateContainerRequest(pod_sandbox_id="0" * 64, config=container_config("y", busybox, ["true"])),
            )
            == grpc.StatusCode.NOT_FOUND
        )
        cid = start_container(live_daemon, sid, config, container_config("once", busybox, ["sleep", "100"]))
        assert (
            code_of(rt.StartContainer, pb.StartContainerRequest(container_id=cid))
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        with pytest.raises(grpc.RpcError) as same_name:
            rt.CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=sid, config=container_config("once", busybox, ["true"]), sandbox_config=config
                ),
                timeout=30,
            )
        assert same_name.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        remove_pod(live_daemon, sid)


# Both runtimes look the command up while creating the container, so CreateContainer fails
# with their reason, and nothing is left listed.
MISSING_COMMAND_REASONS = {
    "runc": r"exec: \"/no/such/binary\": stat /no/such/binary: no such file or directory",  # in runc's quoted log
    "crun": "executable file `/no/such/binary` not found in $PATH: No such file or directory",
}


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_missing_command_fails_create_with_the_runtime_reason(live_daemon: Daemon, busybox: str, handler: str) -> None:
    rt = live_daemon.runtime
    sid, config = run_pod(live_daemon, f"nocmd-{handler}", handler=handler)
    try:
        cfg = container_config("ghost", busybox, ["/no/such/binary"])
        refused = refusal(
            lambda: rt.CreateContainer(
                pb.CreateContainerRequest(pod_sandbox_id=sid, config=cfg, sandbox_config=config), timeout=30
            )
        )
        assert refused.code() == grpc.StatusCode.INTERNAL, refused.details()
        assert refused.details().startswith("creating container "), refused.details()
        assert MISSING_COMMAND_REASONS[handler] in refused.details(), refused.details()
        listed = rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=sid)), timeout=10)
        assert list(listed.containers) == []
    finally:
        remove_pod(live_daemon, sid)


def test_reopen_container_log_creates_a_new_file(live_daemon: Daemon, busybox: str) -> None:
    rt = live_daemon.runtime
    sid, config = run_pod(live_daemon, "reopen")
    try:
        cmd = ["sh", "-c", "while true; do echo line; sleep 0.1; done"]
        cid = start_container(live_daemon, sid, config, container_config("talker", busybox, cmd))
        log = Path(container_status(live_daemon, cid).log_path)
        eventually(lambda: log.stat().st_size, bool, timeout=10, what="the first log lines")
        rotated = log.with_suffix(".1")
        os.rename(log, rotated)
        rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=10)
        assert log.exists()
        size = rotated.stat().st_size
        # Three lines in the new file are three writes that did not go to the rotated one.
        eventually(lambda: log.read_text().count("\n"), lambda lines: lines >= 3, timeout=10, what="new log lines")
        assert rotated.stat().st_size == size
        rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
        refused = refusal(lambda: rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=30))
        assert (refused.code(), refused.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            f"container {cid} is EXITED, not RUNNING: its log cannot be reopened",
        )
    finally:
        remove_pod(live_daemon, sid)


def test_list_filters_and_stream_twins(live_daemon: Daemon, busybox: str) -> None:
    rt = live_daemon.runtime
    sid, config = run_pod(live_daemon, "lists", labels={"tier": "x"})
    try:
        cid = start_container(
            live_daemon, sid, config, container_config("l", busybox, ["sleep", "100"], labels={"k": "v"})
        )
        by_label = rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector={"tier": "x"})))
        assert [p.id for p in by_label.items] == [sid]
        by_prefix = rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(id=cid[:12])))
        assert [c.id for c in by_prefix.containers] == [cid]
        running = rt.ListContainers(
            pb.ListContainersRequest(
                filter=pb.ContainerFilter(
                    state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING),
                    pod_sandbox_id=sid,
                    label_selector={"k": "v"},
                )
            )
        )
        assert [c.id for c in running.containers] == [cid]
        streamed = [
            c.id
            for chunk in rt.StreamContainers(pb.StreamContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=sid)))
            for c in chunk.containers
        ]
        assert streamed == [cid]
        pods = [
            p.id
            for chunk in rt.StreamPodSandboxes(pb.StreamPodSandboxesRequest(filter=pb.PodSandboxFilter(id=sid)))
            for p in chunk.pod_sandboxes
        ]
        assert pods == [sid]
        verbose = rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True)).info["info"]
        assert '"runtimeSpec"' in verbose
        assert '"pid"' in verbose
    finally:
        remove_pod(live_daemon, sid)


def test_remove_pod_with_running_containers_leaves_nothing(live_daemon: Daemon, busybox: str) -> None:
    rt = live_daemon.runtime
    sid, config = run_pod(live_daemon, "rmrunning")
    cid = start_container(live_daemon, sid, config, container_config("r", busybox, ["sleep", "1000"]))
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    assert code_of(rt.ContainerStatus, pb.ContainerStatusRequest(container_id=cid)) == grpc.StatusCode.NOT_FOUND
    assert not (live_daemon.root / "containers" / cid).exists()
    assert not (live_daemon.root / "sandboxes" / sid).exists()
    assert str(live_daemon.root) not in Path("/proc/self/mountinfo").read_text()


def test_reopen_replaces_a_planted_symlink_and_never_follows_it(
    live_daemon: Daemon, busybox: str, tmp_path: Path
) -> None:
    rt = live_daemon.runtime
    sid, config = run_pod(live_daemon, "symlinklog")
    try:
        cmd = ["sh", "-c", "while true; do echo line; sleep 0.1; done"]
        cid = start_container(live_daemon, sid, config, container_config("talker", busybox, cmd))
        log = Path(container_status(live_daemon, cid).log_path)
        victim = tmp_path / "victim"
        victim.write_text("untouched\n")
        os.rename(log, log.with_suffix(".1"))
        log.symlink_to(victim)
        rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid), timeout=10)
        assert not log.is_symlink()
        eventually(lambda: log.stat().st_size, bool, timeout=10, what="lines in the reopened log")
        assert victim.read_text() == "untouched\n"
    finally:
        remove_pod(live_daemon, sid)


def test_events_of_a_container_that_exits_at_once_come_in_order(live_daemon: Daemon, busybox: str) -> None:
    import threading

    rt = live_daemon.runtime
    sid, config = run_pod(live_daemon, "eventorder")
    seen: list[tuple[str, int]] = []
    stream = rt.GetContainerEvents(pb.GetEventsRequest())

    def read() -> None:
        try:
            for event in stream:
                seen.append((event.container_id, event.container_event_type))
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    reader = threading.Thread(target=read)
    reader.start()

    def kinds_of(cid: str) -> list[int]:
        return [kind for event_cid, kind in list(seen) if event_cid == cid]

    try:
        # The stream is subscribed once it carries an event: a first container's creation.
        probe = start_container(live_daemon, sid, config, container_config("probe", busybox, ["true"]))
        eventually(lambda: kinds_of(probe), bool, timeout=10, what="the first event on the stream")
        ids = [
            start_container(live_daemon, sid, config, container_config(f"quick{i}", busybox, ["true"]))
            for i in range(5)
        ]
        for cid in ids:
            wait_exited(live_daemon, cid)
        for cid in ids:
            kinds = eventually(partial(kinds_of, cid), lambda k: len(k) >= 3, timeout=10, what=f"3 events of {cid}")
            assert kinds == [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_STOPPED_EVENT]
    finally:
        stream.cancel()
        reader.join(10)
        remove_pod(live_daemon, sid)
