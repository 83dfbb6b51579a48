"""The daemon dies (SIGKILL included) and comes back: nothing the kubelet saw changes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import (
    container_config,
    container_status,
    eventually,
    pod_config,
    pull,
    remove_pod,
    run_pod,
    start_container,
    wait_exited,
)
from tests.support.daemon import Daemon, running_daemon

pytestmark = pytest.mark.root
T = TypeVar("T")


def snapshot(daemon: Daemon) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    rt = daemon.runtime
    pods = sorted((p.id, p.state) for p in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items)
    ctrs = sorted((c.id, c.state) for c in rt.ListContainers(pb.ListContainersRequest(), timeout=10).containers)
    return pods, ctrs


def test_kill9_keeps_containers_running_and_records_exits_from_the_downtime(test_images) -> None:
    with running_daemon() as daemon:
        image = test_images.ref("busybox:latest")
        pull(daemon, image)
        sid, pod = run_pod(daemon, "survivor")
        ticker = start_container(
            daemon,
            sid,
            pod,
            container_config("ticker", image, ["sh", "-c", "while true; do echo tick; sleep 0.2; done"]),
        )
        short = start_container(daemon, sid, pod, container_config("short", image, ["sh", "-c", "sleep 1; exit 5"]))
        before = snapshot(daemon)
        status_before = container_status(daemon, ticker)
        verbose = daemon.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=short, verbose=True), timeout=10
        )
        short_pid = json.loads(verbose.info["info"])["pid"]
        daemon.kill9()
        eventually(lambda: _exited(short_pid), bool, timeout=30, what="`short` exiting while nobody watches")
        daemon.start()
        pods, ctrs = snapshot(daemon)
        assert pods == before[0]
        states = dict(ctrs)
        assert states[ticker] == pb.CONTAINER_RUNNING
        assert states[short] == pb.CONTAINER_EXITED
        exited = container_status(daemon, short)
        assert exited.exit_code == 5
        assert exited.reason == "Error"
        assert 0.8e9 < exited.finished_at - exited.started_at < 1.9e9  # the real exit time, not the restart time
        again = container_status(daemon, ticker)
        assert again.started_at == status_before.started_at
        assert again.created_at == status_before.created_at
        log = Path(again.log_path)
        size = log.stat().st_size
        eventually(lambda: log.stat().st_size, lambda now: now > size, timeout=10, what="the log growing")
        daemon.runtime.StopContainer(pb.StopContainerRequest(container_id=ticker, timeout=1), timeout=30)
        assert container_status(daemon, ticker).state == pb.CONTAINER_EXITED
        remove_pod(daemon, sid)
        assert snapshot(daemon) == ([], [])


def _exited(pid: int) -> bool:
    """The process is gone or a zombie: it has exited, whether or not its parent has reaped it yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(") ")[2].startswith("Z")


def _cgroup_mounts() -> list[Path]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[0] in ("cgroup", "cgroup2"):
            mounts.append(Path(fields[0].split()[4]))
    return mounts


def _crishim_scopes() -> list[str]:
    """The systemd scopes the systemd driver made for containers (none where PID 1 is not systemd)."""
    if not Path("/run/systemd/system").is_dir():
        return []
    listed = subprocess.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "crishim-*.scope"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def leftovers(daemon: Daemon) -> dict[str, list[str]]:
    """Mounts, conmons, runtime containers and netns pins of this daemon's directory.

    Cgroups are not here: other daemons share crishim's default parent, so a test counts
    the cgroups below a PodParent of its own.
    """
    # The pin directory itself is a shared self-bind by design (as iproute2 makes /run/netns).
    pin_dir = f" {daemon.dir}/run/netns "
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(daemon.dir) in line and pin_dir not in line
    ]
    conmons = subprocess.run(["pgrep", "-f", f"conmon.*{daemon.dir}"], capture_output=True, text=True).stdout.split()
    conmons = [f"{pid}: {_cmdline(pid)} children: {_children(pid)}" for pid in conmons]
    runc = []
    for handler in ("runc", "crun"):
        root = daemon.dir / "run" / handler
        if root.exists():
            out = subprocess.run([handler, "--root", str(root), "list", "-q"], capture_output=True, text=True).stdout
            runc += out.split()
    netns = [p.name for p in (daemon.dir / "run" / "netns").glob("*")]
    return {"mounts": mounts, "conmon": conmons, "runtime": runc, "netns": netns}


def _log_lines_about(daemon: Daemon, conmons: list[str]) -> list[str]:
    """The daemon's log lines that name the objects of leftover conmons (`-c <id>`)."""
    ids = {words[words.index("-c") + 1][:13] for words in (c.split() for c in conmons) if "-c" in words}
    log = (daemon.dir / "daemon.log").read_text(errors="replace").splitlines()
    return [line for line in log if any(i in line for i in ids)][-40:]


def _cmdline(pid: str) -> str:
    """What a leftover process runs, so a failure says which object it belonged to."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


def _children(pid: str) -> list[str]:
    try:
        kids = " ".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children")).split()
    except OSError:
        return []
    return [f"{kid}: {_cmdline(kid)}" for kid in kids]


# The calls of a pod's lifecycle, in order; each round of the crash test kills the daemon
# inside one of them (CRASH_CALLS in turn), at a random point of it.
LIFECYCLE_CALLS = (
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
)
UNDER_EMULATION = os.environ.get("CRISHIM_NODE_VM") == "1"
# On the host: 50 rounds beside two busy processes, inside every call in turn. In the node
# VM (software emulation, ten times slower, busy enough as it is) one round in each call
# that makes or removes a systemd scope or a v2 cgroup, to check none outlives a crash.
CRASH_CALLS = (
    ("RunPodSandbox", "CreateContainer", "StartContainer", "StopPodSandbox") if UNDER_EMULATION else LIFECYCLE_CALLS
)
CRASH_ROUNDS = len(CRASH_CALLS) if UNDER_EMULATION else 50
CPU_HOGS = 0 if UNDER_EMULATION else 2


class Lifecycle:
    """One pod's lifecycle through CRI, in a thread, telling when each call begins and ends."""

    def __init__(self, daemon: Daemon, image: str, name: str, parent: str) -> None:
        self.daemon, self.image, self.name, self.parent = daemon, image, name, parent
        self.started = {call: threading.Event() for call in LIFECYCLE_CALLS}
        self.seconds: dict[str, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._calls()
        except grpc.RpcError:
            pass  # the daemon died under the call: that is the point
        finally:
            self.done.set()

    def _timed(self, call: str, fn: Callable[[], T]) -> T:
        self.started[call].set()
        began = time.monotonic()
        result = fn()
        self.seconds[call] = time.monotonic() - began
        return result

    def _calls(self) -> None:
        rt = self.daemon.runtime
        pod = pod_config(self.name, self.daemon, linux=pb.LinuxPodSandboxConfig(cgroup_parent=self.parent))
        sid = self._timed(
            "RunPodSandbox", lambda: rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod), timeout=60).pod_sandbox_id
        )
        cfg = container_config("c", self.image, ["sleep", "100"])
        create = pb.CreateContainerRequest(pod_sandbox_id=sid, config=cfg, sandbox_config=pod)
        cid = self._timed("CreateContainer", lambda: rt.CreateContainer(create, timeout=60).container_id)
        self._timed("StartContainer", lambda: rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60))
        stop = pb.StopContainerRequest(container_id=cid, timeout=0)
        self._timed("StopContainer", lambda: rt.StopContainer(stop, timeout=60))
        remove = pb.RemoveContainerRequest(container_id=cid)
        self._timed("RemoveContainer", lambda: rt.RemoveContainer(remove, timeout=60))
        stop_pod = pb.StopPodSandboxRequest(pod_sandbox_id=sid)
        self._timed("StopPodSandbox", lambda: rt.StopPodSandbox(stop_pod, timeout=60))
        remove_pod_request = pb.RemovePodSandboxRequest(pod_sandbox_id=sid)
        self._timed("RemovePodSandbox", lambda: rt.RemovePodSandbox(remove_pod_request, timeout=60))


@contextmanager
def cpu_hogs(count: int) -> Iterator[None]:
    """`count` busy processes beside the test, so the crash windows meet a loaded node."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


class PodParent:
    """A cgroup parent of one test's own, so every cgroup or scope below it is one this
    daemon made: the test's check cannot mistake another daemon's for a leak (test daemons,
    benchmarks and other suites on the node share crishim's default parent)."""

    def __init__(self, daemon: Daemon, test: str) -> None:
        answer = daemon.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=10)
        self.systemd = answer.linux.cgroup_driver == pb.SYSTEMD
        self.name = f"crishim{test}{os.getpid()}.slice" if self.systemd else f"/crishim-{test}-{os.getpid()}"

    def dirs(self) -> list[Path]:
        """The parent in every hierarchy where it exists (systemd expands a top-level slice to itself)."""
        return [root / self.name.strip("/") for root in _cgroup_mounts() if (root / self.name.strip("/")).is_dir()]

    def children(self) -> list[str]:
        return sorted(str(child) for parent in self.dirs() for child in parent.iterdir() if child.is_dir())

    def scopes(self) -> list[str]:
        """The systemd scopes in this slice, whether or not their cgroup is still there."""
        return [scope for scope in _crishim_scopes() if self.systemd and _slice_of(scope) == self.name]

    def remove(self) -> None:
        if self.systemd:
            subprocess.run(["systemctl", "stop", self.name], capture_output=True, check=False)
        for parent in self.dirs():
            with contextlib.suppress(OSError):
                parent.rmdir()


def _slice_of(unit: str) -> str:
    shown = subprocess.run(["systemctl", "show", "-p", "Slice", "--value", unit], capture_output=True, text=True)
    return shown.stdout.strip()


@pytest.mark.timeout(1800)  # 50 crashes and restarts on the host: 3 to 5 minutes; 4 under emulation: 5 to 13
def test_crash_at_random_points_of_the_lifecycle_leaves_a_consistent_node(test_images) -> None:
    rng = random.Random(20261203)
    with running_daemon() as daemon, cpu_hogs(CPU_HOGS):
        parent = PodParent(daemon, "crash")
        try:
            _crash_rounds(daemon, test_images.ref("busybox:latest"), parent.name, rng)
            # Cleaning up through CRI leaves nothing behind.
            for pod in daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items:
                remove_pod(daemon, pod.id)
            found = leftovers(daemon)
            assert found["conmon"] == [], (found, _log_lines_about(daemon, found["conmon"]))
            assert found["runtime"] == [], found
            assert found["netns"] == [], found
            assert [m for m in found["mounts"] if "/root/" in m] == [], found["mounts"]
            assert parent.children() == []
            assert parent.scopes() == []
        finally:
            parent.remove()


def _crash_rounds(daemon: Daemon, image: str, parent: str, rng: random.Random) -> None:
    """Kills the daemon inside each call of CRASH_CALLS in turn, restarting it after each."""
    pull(daemon, image)
    # One lifecycle without a crash measures how long each call takes on this node now.
    timing = Lifecycle(daemon, image, "timing", parent)
    timing.thread.start()
    timing.thread.join(300)
    assert set(timing.seconds) == set(LIFECYCLE_CALLS), "the lifecycle without a crash did not complete"
    crashed_in = []
    for round_ in range(CRASH_ROUNDS):
        call = CRASH_CALLS[round_ % len(CRASH_CALLS)]
        lifecycle = Lifecycle(daemon, image, f"crash{round_}", parent)
        lifecycle.thread.start()
        if not _wait_for_either(lifecycle.started[call], lifecycle.done, 120):
            pytest.fail(f"round {round_}: {call} did not begin within 120 s")
        time.sleep(rng.random() * timing.seconds[call])  # a random point inside the call
        if call not in lifecycle.seconds:
            crashed_in.append(call)
        daemon.kill9()
        lifecycle.thread.join(60)
        daemon.start()
        _assert_listed_objects_exist(daemon)
    # Crashes hit the calls they aimed at. One that finishes sooner than it did in the
    # timing round is missed and the crash lands in a later call; a third is far below
    # what any run has seen, and far above what a broken aim would give.
    assert len(crashed_in) >= CRASH_ROUNDS // 3, crashed_in


def _wait_for_either(first: threading.Event, second: threading.Event, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if first.is_set():
            return True
        if second.is_set():
            return first.is_set()
        time.sleep(0.002)
    return False


def _assert_listed_objects_exist(daemon: Daemon) -> None:
    """Every pod and container the restarted daemon lists has its bundle on the machine."""
    for pod in daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items:
        assert (daemon.root / "sandboxes" / pod.id).exists()
    for ctr in daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers:
        assert (daemon.root / "containers" / ctr.id).exists()


def test_twenty_pods_with_two_containers_leave_nothing_behind(test_images) -> None:
    with running_daemon() as daemon:
        image = test_images.ref("busybox:latest")
        pull(daemon, image)
        parent = PodParent(daemon, "leak")
        linux = pb.LinuxPodSandboxConfig(cgroup_parent=parent.name)
        try:
            pods = []
            for i in range(20):
                sid, pod = run_pod(daemon, f"leak{i}", linux=linux)
                start_container(daemon, sid, pod, container_config("a", image, ["sleep", "1000"]))
                done = start_container(daemon, sid, pod, container_config("b", image, ["true"]))
                wait_exited(daemon, done)
                pods.append(sid)
            for sid in pods:
                remove_pod(daemon, sid)
            found = leftovers(daemon) | {"cgroups": parent.children() + parent.scopes()}
            assert found == {"mounts": [], "conmon": [], "runtime": [], "netns": [], "cgroups": []}, found
        finally:
            parent.remove()
