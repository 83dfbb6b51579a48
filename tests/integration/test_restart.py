"""The daemon dies (SIGKILL included) and comes back: nothing the kubelet saw changes."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import (
    container_config,
    container_status,
    eventually,
    remove_pod,
    run_pod,
    start_container,
    wait_exited,
)
from tests.support.daemon import Daemon, running_daemon

pytestmark = pytest.mark.root


def snapshot(daemon: Daemon) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    rt = daemon.runtime
    pods = sorted((p.id, p.state) for p in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items)
    ctrs = sorted((c.id, c.state) for c in rt.ListContainers(pb.ListContainersRequest(), timeout=10).containers)
    return pods, ctrs


def test_kill9_keeps_containers_running_and_records_exits_from_the_downtime(test_images) -> None:
    with running_daemon() as daemon:
        image = test_images.ref("busybox:latest")
        daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
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


def _crishim_cgroups() -> list[str]:
    top = Path("/sys/fs/cgroup/memory/crishim")
    return [str(p) for p in top.glob("*") if p.is_dir()] if top.exists() else []


def _owned_by_another_daemon(object_id: str, daemon: Daemon) -> bool:
    """Test daemons share the `crishim` cgroup parent; a cgroup whose bundle lives in another
    daemon's directory is that daemon's (its bundle goes only after the runtime removed it)."""
    bundles = Path("/tmp").glob(f"cs-*/root/*/{object_id}")  # tests/support/daemon.py makes them
    return any(daemon.dir not in bundle.parents for bundle in bundles)


def leftovers(daemon: Daemon) -> dict[str, list[str]]:
    # The pin directory itself is a shared self-bind by design (as iproute2 makes /run/netns).
    pin_dir = f" {daemon.dir}/run/netns "
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(daemon.dir) in line and pin_dir not in line
    ]
    conmons = subprocess.run(["pgrep", "-f", f"conmon.*{daemon.dir}"], capture_output=True, text=True).stdout.split()
    runc = []
    for handler in ("runc", "crun"):
        root = daemon.dir / "run" / handler
        if root.exists():
            out = subprocess.run([handler, "--root", str(root), "list", "-q"], capture_output=True, text=True).stdout
            runc += out.split()
    netns = [p.name for p in (daemon.dir / "run" / "netns").glob("*")]
    cgroups = [p for p in _crishim_cgroups() if not _owned_by_another_daemon(Path(p).name, daemon)]
    return {"mounts": mounts, "conmon": conmons, "runtime": runc, "netns": netns, "cgroups": cgroups}


@pytest.mark.timeout(1800)  # twenty crashes and restarts: about 80 s on the host, ten times that under emulation
def test_crash_at_random_points_of_the_lifecycle_leaves_a_consistent_node(test_images) -> None:
    rng = random.Random(20261126)
    with running_daemon() as daemon:
        image = test_images.ref("busybox:latest")
        daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
        for round_ in range(20):
            rt = daemon.runtime
            steps_done = 0
            crash_after = rng.random() * 1.2

            def lifecycle(round_: int = round_, rt=rt) -> None:
                nonlocal steps_done
                sid, pod = run_pod(daemon, f"crash{round_}")
                steps_done += 1
                cfg = container_config("c", image, ["sleep", "100"])
                cid = rt.CreateContainer(
                    pb.CreateContainerRequest(pod_sandbox_id=sid, config=cfg, sandbox_config=pod), timeout=30
                ).container_id
                rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=30)
                rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
                rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
                rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=30)
                rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=30)

            import threading

            worker = threading.Thread(target=lambda: _swallow(lifecycle))
            worker.start()
            time.sleep(crash_after)  # a random point of the lifecycle: the crash's timing is what varies
            daemon.kill9()
            worker.join(60)
            daemon.start()
            # Every listed object exists on the machine.
            for pod in daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items:
                assert (daemon.root / "sandboxes" / pod.id).exists()
            for ctr in daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers:
                assert (daemon.root / "containers" / ctr.id).exists()
        # Cleaning up through CRI leaves nothing behind.
        for pod in daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items:
            remove_pod(daemon, pod.id)
        found = leftovers(daemon)
        assert found["conmon"] == [], found
        assert found["runtime"] == [], found
        assert found["netns"] == [], found
        assert [m for m in found["mounts"] if "/root/" in m] == [], found["mounts"]


def _swallow(fn) -> None:
    try:
        fn()
    except grpc.RpcError:
        pass  # the daemon died under the call: that is the point


def test_twenty_pods_with_two_containers_leave_nothing_behind(test_images) -> None:
    with running_daemon() as daemon:
        image = test_images.ref("busybox:latest")
        daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
        cgroups_before = set(leftovers(daemon)["cgroups"])
        pods = []
        for i in range(20):
            sid, pod = run_pod(daemon, f"leak{i}")
            start_container(daemon, sid, pod, container_config("a", image, ["sleep", "1000"]))
            done = start_container(daemon, sid, pod, container_config("b", image, ["true"]))
            wait_exited(daemon, done)
            pods.append(sid)
        for sid in pods:
            remove_pod(daemon, sid)
        found = leftovers(daemon)
        found["cgroups"] = sorted(set(found["cgroups"]) - cgroups_before)
        assert found == {"mounts": [], "conmon": [], "runtime": [], "netns": [], "cgroups": []}, found
