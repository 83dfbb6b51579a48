"""Pods without a pause process: their IPC and UTS namespaces pinned, joined by every container.

A pod whose containers do not share one PID namespace (the kubelet's default) runs
no infra container; one that shares it, or that has a user namespace, still does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.oci.mounttable import mount_points, unmount

from tests.support.cri import (
    container_config,
    exec_checked,
    kubelet_pod_linux,
    pod_config,
    pod_status,
    pull,
    remove_pod,
    run_pod,
    run_pod_sandbox,
    start_container,
    stop_pod,
    wait_running,
)
from tests.support.daemon import Daemon, running_daemon
from tests.support.node import container_pid

pytestmark = pytest.mark.root

SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


def _info(daemon: Daemon, sid: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(pod_status(daemon, sid, verbose=True).info["info"])
    return info


def _pins(daemon: Daemon, sid: str) -> dict[str, str]:
    pins = _info(daemon, sid)["pinnedNamespaces"]
    assert isinstance(pins, dict)
    return pins


def _namespace(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _pinned(path: str, kind: str) -> str:
    """The namespace a pin holds, named as /proc/PID/ns/ names it."""
    return f"{kind}:[{os.stat(path).st_ino}]"


def _processes_naming(text: str) -> list[int]:
    """PIDs whose command line names `text` (a pod's conmon names its ID)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_pod_that_does_not_share_its_pid_namespace_runs_no_pause_process(live_daemon: Daemon, busybox: str) -> None:
    sysctls = {"kernel.shmmni": "2048", "net.ipv4.ip_unprivileged_port_start": "80"}
    sid, pod = run_pod(live_daemon, "no-pause", hostname="no-pause", linux=kubelet_pod_linux(sysctls=sysctls))
    try:
        info = _info(live_daemon, sid)
        assert info["pid"] == 0
        assert not _processes_naming(sid), "a process runs for the pod itself"
        pins = _pins(live_daemon, sid)
        assert sorted(pins) == ["ipc", "uts"]
        assert set(pins.values()) <= set(mount_points())
        first = start_container(live_daemon, sid, pod, _sleeper("first", busybox))
        second = start_container(live_daemon, sid, pod, _sleeper("second", busybox))
        pids = [container_pid(live_daemon, cid) for cid in (first, second)]
        netns_path = str(info["netnsPath"])
        for pid in pids:
            # Every container joins the pod's pinned namespaces, not new ones of its own ...
            assert _namespace(pid, "ipc") == _pinned(pins["ipc"], "ipc")
            assert _namespace(pid, "uts") == _pinned(pins["uts"], "uts")
            assert _namespace(pid, "net") == _pinned(netns_path, "net")
        # ... but each has its own PID namespace, as the pod asked.
        assert _namespace(pids[0], "pid") != _namespace(pids[1], "pid")
        # What the pause container's runtime set is set in the pinned namespaces.
        assert exec_checked(live_daemon, first, ["hostname"]).strip() == "no-pause"
        assert exec_checked(live_daemon, second, ["cat", "/proc/sys/kernel/shmmni"]).strip() == "2048"
        assert exec_checked(live_daemon, first, ["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]) == "80\n"
        # Shared memory is the pod's: what one container puts in /dev/shm the other reads.
        exec_checked(live_daemon, first, ["sh", "-c", "echo shared > /dev/shm/note"])
        assert exec_checked(live_daemon, second, ["cat", "/dev/shm/note"]) == "shared\n"
        stop_pod(live_daemon, sid)
        assert pod_status(live_daemon, sid).status.state == pb.SANDBOX_NOTREADY
        assert not set(pins.values()) & set(mount_points())
        assert not any(Path(p).exists() for p in pins.values())
    finally:
        remove_pod(live_daemon, sid)


def test_a_pod_on_the_host_network_pins_its_ipc_namespace_alone(live_daemon: Daemon, busybox: str) -> None:
    sid, pod = run_pod(live_daemon, "no-pause-host-net", linux=kubelet_pod_linux(network=pb.NODE))
    try:
        pins = _pins(live_daemon, sid)
        assert list(pins) == ["ipc"]
        cid = start_container(live_daemon, sid, pod, _sleeper("app", busybox))
        pid = container_pid(live_daemon, cid)
        assert _namespace(pid, "uts") == _namespace(os.getpid(), "uts")
        assert _namespace(pid, "ipc") == _pinned(pins["ipc"], "ipc")
    finally:
        remove_pod(live_daemon, sid)


def test_a_pod_sharing_its_pid_namespace_keeps_its_pause_process(live_daemon: Daemon, busybox: str) -> None:
    shared = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
    )
    sid, pod = run_pod(live_daemon, "shared-pid", linux=shared)
    try:
        pause = int(str(_info(live_daemon, sid)["pid"]))
        assert pause > 0
        assert _pins(live_daemon, sid) == {}
        cid = start_container(
            live_daemon,
            sid,
            pod,
            _sleeper(
                "app",
                busybox,
                linux=pb.LinuxContainerConfig(
                    security_context=pb.LinuxContainerSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
                ),
            ),
        )
        assert _namespace(container_pid(live_daemon, cid), "pid") == _namespace(pause, "pid")
    finally:
        remove_pod(live_daemon, sid)


def test_a_container_asking_for_the_pod_pid_namespace_of_a_pod_without_one_gets_its_own(
    live_daemon: Daemon, busybox: str
) -> None:
    """POD is the proto's default, so a bare config asks it: in a pod that does not share, it has its own."""
    sid, pod = run_pod(live_daemon, "no-shared-pid", linux=kubelet_pod_linux())
    try:
        pod_pid = pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
        )
        first = start_container(live_daemon, sid, pod, _sleeper("first", busybox, linux=pod_pid))
        second = start_container(live_daemon, sid, pod, _sleeper("second", busybox))
        pids = [container_pid(live_daemon, cid) for cid in (first, second)]
        assert len({_namespace(pid, "pid") for pid in [*pids, os.getpid()]}) == 3
        # PID 1 in there is the container's own shell, where a shared namespace would show a pause process.
        assert exec_checked(live_daemon, first, ["cat", "/proc/1/cmdline"]).startswith("sh\0-c\0")
        assert _pins(live_daemon, sid)["ipc"]
    finally:
        remove_pod(live_daemon, sid)


def test_pins_outlive_a_kill9_of_the_daemon_and_a_pod_whose_pins_are_gone_is_notready(test_images) -> None:
    with running_daemon() as daemon:
        image = test_images.ref("busybox:latest")
        pull(daemon, image)
        kept, pod = run_pod(daemon, "kept", hostname="kept-pod", linux=kubelet_pod_linux())
        cid = start_container(daemon, kept, pod, _sleeper("app", image))
        lost = run_pod_sandbox(daemon, pod_config("lost", daemon, linux=kubelet_pod_linux()))
        lost_pins = _pins(daemon, lost)
        daemon.kill9()
        for pin in lost_pins.values():  # as a reboot leaves them: the files without the namespaces
            unmount(pin)
        daemon.start()
        assert pod_status(daemon, kept).status.state == pb.SANDBOX_READY
        assert pod_status(daemon, lost).status.state == pb.SANDBOX_NOTREADY
        wait_running(daemon, cid)
        assert exec_checked(daemon, cid, ["hostname"]).strip() == "kept-pod"
        second = start_container(daemon, kept, pod, _sleeper("after-restart", image))
        pins = _pins(daemon, kept)
        assert _namespace(container_pid(daemon, second), "ipc") == _pinned(pins["ipc"], "ipc")
        for sid in (kept, lost):
            remove_pod(daemon, sid)
            assert not [m for m in mount_points() if sid in m]


def test_with_drop_infra_container_off_every_pod_has_its_pause_process(test_images) -> None:
    with running_daemon("drop_infra_container = false\n") as daemon:
        pull(daemon, test_images.ref("busybox:latest"))
        sid, _ = run_pod(daemon, "with-pause", linux=kubelet_pod_linux())
        try:
            assert int(str(_info(daemon, sid)["pid"])) > 0
            assert _pins(daemon, sid) == {}
        finally:
            remove_pod(daemon, sid)


def _sleeper(name: str, image: str, **kwargs: object) -> pb.ContainerConfig:
    return container_config(name, image, SLEEPER, **kwargs)
