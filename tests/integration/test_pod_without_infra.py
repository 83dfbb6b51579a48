"""Pods without a pause process: their IPC and UTS namespaces pinned, joined by every container.

A pod whose containers do not share one PID namespace (the kubelet's default) runs
no infra container; one that shares it has that namespace held by a catatonit of
its own (runtime/sandbox/pidholder.py); one with a user namespace still runs one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from crishim.cgroups.stats import cgroup_for
from crishim.cri_api import api_pb2 as pb
from crishim.oci import processes
from crishim.oci.mounttable import mount_points, unmount
from crishim.runtime.sandbox import pidholder

from tests.support.cri import (
    container_config,
    eventually,
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


SHARED_PID = pb.LinuxPodSandboxConfig(
    security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
)
POD_PID = pb.LinuxContainerConfig(
    security_context=pb.LinuxContainerSecurityContext(namespace_options=pb.NamespaceOption(pid=pb.POD))
)


def _status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _parent(pid: int) -> int:
    return int(_status_fields(pid)["PPid"])


def test_a_pod_sharing_its_pid_namespace_has_it_held_by_a_confined_catatonit(live_daemon: Daemon, busybox: str) -> None:
    """No pause container: catatonit holds the PID namespace, the other namespaces are pinned."""
    sid, pod = run_pod(live_daemon, "shared-pid", hostname="shared-pid-pod", linux=SHARED_PID)
    try:
        holder = int(str(_info(live_daemon, sid)["pid"]))
        assert holder > 0
        pins = _pins(live_daemon, sid)
        assert set(pins) == {"ipc", "uts"}
        assert Path(f"/proc/{holder}/cmdline").read_bytes() == b"/catatonit\0-P\0"
        status = _status_fields(holder)
        assert status["Uid"].split() == ["65535"] * 4
        assert status["Gid"].split() == ["65535"] * 4
        assert status["Groups"] == ""
        assert int(status["CapEff"], 16) == 0
        assert int(status["CapPrm"], 16) == 0
        # Not dumpable: its /proc files belong to root, not to its uid, so no process of the pod reads them.
        assert os.stat(f"/proc/{holder}/environ").st_uid == 0
        assert os.readlink(f"/proc/{holder}/root") == str(Path(live_daemon.dir, "run", "pid-holder"))
        assert os.listdir(f"/proc/{holder}/root") == ["catatonit"]
        assert _namespace(holder, "net") == _pinned(str(_info(live_daemon, sid)["netnsPath"]), "net")
        for kind in ("ipc", "uts"):
            assert _namespace(holder, kind) == _pinned(pins[kind], kind)
        # No runtime and no conmon ran for the pod itself.
        assert not [pid for pid in _processes_naming(sid) if b"conmon" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        first = start_container(live_daemon, sid, pod, _sleeper("first", busybox, linux=POD_PID))
        second = start_container(live_daemon, sid, pod, _sleeper("second", busybox, linux=POD_PID))
        for cid in (first, second):
            assert _namespace(container_pid(live_daemon, cid), "pid") == _namespace(holder, "pid")
            assert _namespace(container_pid(live_daemon, cid), "ipc") == _pinned(pins["ipc"], "ipc")
        assert exec_checked(live_daemon, first, ["cat", "/proc/1/cmdline"]) == "/catatonit\0-P\0"
        assert exec_checked(live_daemon, first, ["hostname"]).strip() == "shared-pid-pod"
        # Each container sees the other's processes, and cannot look into the holder.
        assert "sleep" in exec_checked(live_daemon, second, ["ps", "-o", "comm"])
        failed = live_daemon.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=first, cmd=["ls", "/proc/1/root/"], timeout=10)
        )
        assert failed.exit_code != 0
        assert b"ermission denied" in failed.stderr
        unshare = _parent(holder)
        stop_pod(live_daemon, sid)
        # The stop has waited for both and reaped unshare, its child: neither is left, not even a zombie.
        assert not Path(f"/proc/{holder}").exists()
        assert not Path(f"/proc/{unshare}").exists()
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


def _holder_of(daemon: Daemon, sid: str) -> int:
    return int(str(_info(daemon, sid)["pid"]))


def _kill_and_wait_gone(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: processes.alive(pid), lambda alive: not alive, what=f"process {pid} gone")


def test_a_pod_whose_holder_dies_is_notready(live_daemon: Daemon) -> None:
    sid, _ = run_pod(live_daemon, "holder-dies", linux=SHARED_PID)
    try:
        _kill_and_wait_gone(_holder_of(live_daemon, sid))
        eventually(
            lambda: pod_status(live_daemon, sid).status.state,
            lambda state: state == pb.SANDBOX_NOTREADY,
            what="the pod NOTREADY",
        )
    finally:
        remove_pod(live_daemon, sid)
    assert not [m for m in mount_points() if sid in m]


def test_holders_outlive_a_kill9_and_the_restarted_daemon_sorts_them(test_images) -> None:
    """A live holder keeps its pod READY; one gone in the downtime makes it NOTREADY; one no record
    names (a crash between its start and the record) is ended."""
    with running_daemon() as daemon:
        image = test_images.ref("busybox:latest")
        pull(daemon, image)
        kept, pod = run_pod(daemon, "kept", linux=SHARED_PID)
        cid = start_container(daemon, kept, pod, _sleeper("app", image, linux=POD_PID))
        lost, _ = run_pod(daemon, "lost", linux=SHARED_PID)
        kept_holder, lost_holder = _holder_of(daemon, kept), _holder_of(daemon, lost)
        holder_dir = Path(daemon.dir, "run", "pid-holder")
        root = pidholder.HolderRoot(holder_dir, shutil.which("unshare") or "unshare")
        stray_id = "f" * 64
        stray = pidholder.spawn(root, stray_id, Path(daemon.dir, "stray.log"))
        stray_cgroup = None
        if not Path("/run/systemd/system").is_dir():  # cgroupfs: placed as RunPodSandbox places one
            stray_cgroup = cgroup_for(f"/crishim/{stray_id}")
            stray_cgroup.create()
            stray_cgroup.add_process(stray.parent_pid)
            stray_cgroup.add_process(stray.pid)
        daemon.kill9()
        assert processes.alive(kept_holder)
        _kill_and_wait_gone(lost_holder)
        daemon.start()
        eventually(
            lambda: [pid for pid in (stray.pid, stray.parent_pid) if processes.alive(pid)],
            lambda alive: not alive,
            what="the stray holder gone",
        )
        assert stray_cgroup is None or not stray_cgroup.exists()
        assert pod_status(daemon, kept).status.state == pb.SANDBOX_READY
        assert pod_status(daemon, lost).status.state == pb.SANDBOX_NOTREADY
        wait_running(daemon, cid)
        second = start_container(daemon, kept, pod, _sleeper("after-restart", image, linux=POD_PID))
        assert _namespace(container_pid(daemon, second), "pid") == _namespace(kept_holder, "pid")
        ps = exec_checked(daemon, second, ["ps", "-o", "pid,comm"])
        assert len([line for line in ps.splitlines()[1:] if line.split()[1] == "sleep"]) >= 1
        for sid in (kept, lost):
            remove_pod(daemon, sid)
            assert not [m for m in mount_points() if sid in m]
        eventually(lambda: processes.alive(kept_holder), lambda alive: not alive, what="the kept pod's holder gone")
