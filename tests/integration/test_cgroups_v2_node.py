"""cgroup v2 on a real node, through the daemon's CRI API: the files runc and crun write for
CRI resources, in-place updates, OOM kills, stats with PSI, and pod-level resources.

Every check reads the container's own cgroup directory, found from /proc/PID/cgroup of its
init process, so nothing here trusts the daemon's idea of where the cgroup is. The daemon
runs with its defaults: on a systemd node that is the systemd driver.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from crishim.cgroups.detect import default_driver
from crishim.cgroups.paths import parent_to_fs
from crishim.cgroups.records import shares_to_weight
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import (
    container_config,
    container_status,
    pod_config,
    remove_pod,
    run_pod,
    start_container,
    wait_exited,
)
from tests.support.daemon import Daemon, running_daemon
from tests.support.node import (
    cgroup_dir,
    container_cgroup,
    installed_runtime,
    psi_total_us,
    pure_v2,
    read_cgroup_file,
    read_kv,
    slice_active,
    stop_units,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not pure_v2(), reason="the host is not pure cgroup v2 (v1 controllers are mounted): run it in scripts/node-vm"
    ),
]

MiB = 1 << 20
SLEEP = ["sleep", "1000"]
BURN = ["sh", "-c", "while :; do :; done"]
# A string that doubles until the memory limit stops it: the kernel OOM-kills the shell.
HOG = ["sh", "-c", "x=a; while :; do x=$x$x; done"]
ALLOC_BYTES = 48 * MiB
ALLOC = [
    "sh",
    "-c",
    f"x=$(head -c {ALLOC_BYTES} /dev/zero | tr '\\0' a); echo ready; while :; do sleep 1000; done",
]


@pytest.fixture(scope="module", params=["runc", "crun"])
def handler(request: pytest.FixtureRequest) -> str:
    return installed_runtime(request.param)


@pytest.fixture(scope="module")
def pod(live_daemon: Daemon, handler: str) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    """A pod under the daemon's default cgroup parent, shared by every such pod."""
    sid, config = run_pod(live_daemon, f"v2-{handler}", handler=handler)
    yield sid, config
    remove_pod(live_daemon, sid)


def start(
    daemon: Daemon, pod: tuple[str, pb.PodSandboxConfig], name: str, image: str, cmd: list[str], **resources: object
) -> str:
    sid, config = pod
    linux = pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(**resources))  # type: ignore[arg-type]
    return start_container(daemon, sid, config, container_config(name, image, cmd, linux=linux))


def test_container_resources_are_written_to_its_cgroup(live_daemon: Daemon, pod, busybox: str) -> None:
    cid = start(
        live_daemon, pod, "limits", busybox, SLEEP,
        cpu_shares=512, cpu_period=100_000, cpu_quota=50_000,
        memory_limit_in_bytes=64 * MiB, memory_swap_limit_in_bytes=96 * MiB,
        cpuset_cpus="0", cpuset_mems="0",
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=4 * MiB)],
        unified={"memory.high": str(48 * MiB)},
    )  # fmt: skip
    d = container_cgroup(live_daemon, cid)
    assert d.name.endswith(f"{cid}.scope") or d.name == cid, d
    assert read_cgroup_file(d, "cpu.weight") == str(shares_to_weight(512))
    assert read_cgroup_file(d, "cpu.max") == "50000 100000"
    assert read_cgroup_file(d, "memory.max") == str(64 * MiB)
    # KEP-2400: CRI's swap limit is memory + swap; v2 limits swap alone, so the runtime writes the difference.
    assert read_cgroup_file(d, "memory.swap.max") == str(32 * MiB)
    assert read_cgroup_file(d, "hugetlb.2MB.max") == str(4 * MiB)
    assert read_cgroup_file(d, "cpuset.cpus") == "0"
    assert read_cgroup_file(d, "cpuset.mems") == "0"
    assert read_cgroup_file(d, "memory.high") == str(48 * MiB)


def test_memory_limit_without_swap_limit_allows_no_swap(live_daemon: Daemon, pod, busybox: str) -> None:
    cid = start(live_daemon, pod, "noswap", busybox, SLEEP, memory_limit_in_bytes=64 * MiB)
    d = container_cgroup(live_daemon, cid)
    assert read_cgroup_file(d, "memory.max") == str(64 * MiB)
    assert read_cgroup_file(d, "memory.swap.max") == "0"


def test_update_container_resources_rewrites_the_files(live_daemon: Daemon, pod, busybox: str) -> None:
    cid = start(
        live_daemon, pod, "resize", busybox, SLEEP,
        cpu_shares=512, cpu_period=100_000, cpu_quota=50_000, memory_limit_in_bytes=64 * MiB,
    )  # fmt: skip
    d = container_cgroup(live_daemon, cid)
    assert read_cgroup_file(d, "memory.max") == str(64 * MiB)
    new = pb.LinuxContainerResources(
        cpu_shares=1024, cpu_period=100_000, cpu_quota=20_000, memory_limit_in_bytes=128 * MiB,
        unified={"memory.high": str(100 * MiB)},
    )  # fmt: skip
    live_daemon.runtime.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(container_id=cid, linux=new), timeout=30
    )
    assert read_cgroup_file(d, "memory.max") == str(128 * MiB)
    assert read_cgroup_file(d, "cpu.max") == "20000 100000"
    assert read_cgroup_file(d, "cpu.weight") == str(shares_to_weight(1024))
    assert read_cgroup_file(d, "memory.high") == str(100 * MiB)
    linux = container_status(live_daemon, cid).resources.linux
    assert (linux.memory_limit_in_bytes, linux.cpu_quota, linux.cpu_shares) == (128 * MiB, 20_000, 1024)
    assert linux.unified["memory.high"] == str(100 * MiB)
    # Shrinking works too, and the process is still the same one in the same cgroup.
    smaller = pb.LinuxContainerResources(memory_limit_in_bytes=48 * MiB, cpu_period=100_000, cpu_quota=10_000)
    live_daemon.runtime.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(container_id=cid, linux=smaller), timeout=30
    )
    assert read_cgroup_file(d, "memory.max") == str(48 * MiB)
    assert read_cgroup_file(d, "cpu.max") == "10000 100000"
    assert container_cgroup(live_daemon, cid) == d


def test_memory_hog_exits_oom_killed(live_daemon: Daemon, pod, busybox: str) -> None:
    cid = start(
        live_daemon, pod, "hog", busybox, HOG, memory_limit_in_bytes=32 * MiB, memory_swap_limit_in_bytes=32 * MiB
    )
    status = wait_exited(live_daemon, cid, timeout=120)
    assert status.state == pb.CONTAINER_EXITED
    assert (status.reason, status.exit_code) == ("OOMKilled", 137), status.message


def test_memory_hog_exits_oom_killed_under_the_cgroupfs_driver(test_images) -> None:
    """Without systemd nobody removes the container's cgroup before its exit is recorded."""
    image = test_images.ref("busybox:latest")
    with running_daemon('cgroup_driver = "cgroupfs"\n') as daemon:
        daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=120)
        config = pod_config("v2-cgroupfs", daemon)
        sid = daemon.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
        cid = start(
            daemon, (sid, config), "hog", image, HOG,
            memory_limit_in_bytes=32 * MiB, memory_swap_limit_in_bytes=32 * MiB,
        )  # fmt: skip
        status = wait_exited(daemon, cid, timeout=120)
        assert (status.reason, status.exit_code) == ("OOMKilled", 137), status.message
        remove_pod(daemon, sid)
    with contextlib.suppress(OSError):
        cgroup_dir("/crishim").rmdir()  # the daemon's default parent, empty once its pods are gone


# -- a pod with a cgroup of its own: stats and pod-level resources ---------------------------


@dataclass
class OwnPod:
    id: str
    config: pb.PodSandboxConfig
    parent: str
    dir: Path
    burn: str = ""
    alloc: str = ""


def own_parent(uid: str, driver: str) -> tuple[str, list[str]]:
    """The pod cgroup the kubelet would make for `uid`, and what to remove afterwards."""
    if driver == "systemd":
        name = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
        made = [u for u in ("kubepods-burstable.slice", "kubepods.slice") if not slice_active(u)]
        return name, [name, *made]
    top = f"/crishim-test-{uid[:8]}"
    return f"{top}/pod{uid}", [top]


def remove_parent(driver: str, leftovers: list[str]) -> None:
    if driver == "systemd":
        stop_units(*leftovers)
        return
    for top in leftovers:
        root = cgroup_dir(top)
        for sub in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            sub.rmdir()
        if root.is_dir():
            root.rmdir()


@pytest.fixture(scope="module")
def own_pod(live_daemon: Daemon, busybox: str) -> Iterator[OwnPod]:
    """A pod under a cgroup of its own, as the kubelet gives it: one CPU burner, one holding 48 MiB."""
    driver = default_driver()
    uid = str(uuid.uuid4())
    parent, leftovers = own_parent(uid, driver)
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="v2-own", uid=uid, namespace="test"),
        log_directory=str(live_daemon.dir / "logs" / "v2-own"),
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent),
    )
    sid = live_daemon.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    try:
        p = OwnPod(sid, config, parent, cgroup_dir(parent_to_fs(parent, driver)))
        p.burn = start(live_daemon, (sid, config), "burn", busybox, BURN, cpu_shares=256, cpu_quota=50_000,
                       cpu_period=100_000)  # fmt: skip
        p.alloc = start(live_daemon, (sid, config), "alloc", busybox, ALLOC, memory_limit_in_bytes=256 * MiB)
        log = Path(config.log_directory, "alloc.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "ready" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.2)
        assert "ready" in log.read_text(), "the allocating container never filled its memory"
        yield p
    finally:
        try:
            remove_pod(live_daemon, sid)
        finally:
            remove_parent(driver, leftovers)


def container_stats(daemon: Daemon, cid: str) -> pb.ContainerStats:
    return daemon.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=30).stats


def working_set(d: Path) -> int:
    """What the kubelet evicts on, computed as it does on v2: memory.current - inactive_file."""
    current = int(read_cgroup_file(d, "memory.current"))
    return max(0, current - read_kv(d, "memory.stat").get("inactive_file", 0))


def test_pod_cgroup_is_the_parent_of_its_containers(live_daemon: Daemon, own_pod: OwnPod) -> None:
    for cid in (own_pod.burn, own_pod.alloc):
        assert container_cgroup(live_daemon, cid).parent == own_pod.dir


def test_container_stats_report_cpu_working_set_and_pressure(live_daemon: Daemon, own_pod: OwnPod) -> None:
    first = container_stats(live_daemon, own_pod.burn)
    time.sleep(1.0)  # the interval the CPU rate and pressure are measured over
    burn_dir = container_cgroup(live_daemon, own_pod.burn)
    cpu_psi_before = psi_total_us(burn_dir, "cpu.pressure")
    second = container_stats(live_daemon, own_pod.burn)
    cpu_psi_after = psi_total_us(burn_dir, "cpu.pressure")
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value + 100_000_000
    # Half a core by quota: the rate is well above a tenth of a core and not above 0.6.
    assert 100_000_000 < second.cpu.usage_nano_cores.value < 600_000_000
    assert second.cpu.HasField("psi")
    assert second.cpu.psi.HasField("Some")
    assert cpu_psi_before * 1000 <= second.cpu.psi.Some.Total <= cpu_psi_after * 1000

    d = container_cgroup(live_daemon, own_pod.alloc)
    low = working_set(d)
    stats = container_stats(live_daemon, own_pod.alloc)
    high = working_set(d)
    memory = stats.memory
    assert memory.working_set_bytes.value >= ALLOC_BYTES
    assert min(low, high) - 2 * MiB <= memory.working_set_bytes.value <= max(low, high) + 2 * MiB
    assert memory.available_bytes.value == 256 * MiB - memory.working_set_bytes.value
    assert memory.rss_bytes.value >= ALLOC_BYTES
    assert memory.HasField("psi")
    assert memory.psi.HasField("Some")
    assert memory.psi.HasField("Full")
    assert stats.HasField("io")
    assert stats.io.HasField("psi")
    assert stats.io.psi.Some.Total <= psi_total_us(d, "io.pressure") * 1000
    # The swap limit equals the memory limit here: no swap may be used, none is available.
    assert stats.swap.swap_available_bytes.value == 0


def test_pod_stats_cover_all_its_containers(live_daemon: Daemon, own_pod: OwnPod) -> None:
    burn = container_stats(live_daemon, own_pod.burn).cpu.usage_core_nano_seconds.value
    stats = live_daemon.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=own_pod.id), timeout=30)
    linux = stats.stats.linux
    assert linux.cpu.usage_core_nano_seconds.value >= burn
    assert linux.memory.working_set_bytes.value >= ALLOC_BYTES
    assert linux.cpu.HasField("psi")
    assert linux.memory.HasField("psi")
    assert linux.io.HasField("psi")
    # pause, the burning shell, the allocating shell and its sleep.
    assert linux.process.process_count.value >= 4
    assert {c.attributes.id for c in linux.containers} == {own_pod.burn, own_pod.alloc}
    current = int(read_cgroup_file(own_pod.dir, "memory.current"))
    assert linux.memory.usage_bytes.value <= current + 4 * MiB


def test_update_pod_sandbox_resources_resizes_the_pod_cgroup(live_daemon: Daemon, own_pod: OwnPod) -> None:
    # KEP-2837: the kubelet sends the pod's resources without the overhead and the overhead
    # apart; its pod cgroup holds their sum.
    resources = pb.LinuxContainerResources(
        cpu_shares=1024, cpu_period=100_000, cpu_quota=150_000, memory_limit_in_bytes=512 * MiB
    )
    overhead = pb.LinuxContainerResources(
        cpu_shares=102, cpu_period=100_000, cpu_quota=10_000, memory_limit_in_bytes=64 * MiB
    )
    live_daemon.runtime.UpdatePodSandboxResources(
        pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=own_pod.id, resources=resources, overhead=overhead),
        timeout=30,
    )
    assert read_cgroup_file(own_pod.dir, "memory.max") == str(576 * MiB)
    assert read_cgroup_file(own_pod.dir, "cpu.max") == "160000 100000"
    assert read_cgroup_file(own_pod.dir, "cpu.weight") == str(shares_to_weight(1126))
    # The containers keep their own limits.
    assert read_cgroup_file(container_cgroup(live_daemon, own_pod.alloc), "memory.max") == str(256 * MiB)


def test_update_pod_sandbox_resources_leaves_a_shared_parent_alone(live_daemon: Daemon, pod, busybox: str) -> None:
    sid, _ = pod
    # A memory limit of its own makes the parent hold memory.max.
    cid = start(live_daemon, pod, "shared", busybox, SLEEP, memory_limit_in_bytes=64 * MiB)
    parent = container_cgroup(live_daemon, cid).parent
    before = read_cgroup_file(parent, "memory.max")
    live_daemon.runtime.UpdatePodSandboxResources(
        pb.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=sid, resources=pb.LinuxContainerResources(memory_limit_in_bytes=64 * MiB)
        ),
        timeout=30,
    )
    assert read_cgroup_file(parent, "memory.max") == before
