"""cgroup v1 (hybrid) access on this host: real cgroups, real busy processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from crishim.cgroups.detect import CgroupLayout, CgroupVersion, detect, hybrid_blocks_crun
from crishim.cgroups.errors import FailedPrecondition, Unavailable
from crishim.cgroups.records import Resources
from crishim.cgroups.stats import StatsSampler, read_cgroup_stats
from crishim.cgroups.v1 import V1Cgroup

pytestmark = pytest.mark.root

BUSYBOX = "/usr/bin/busybox"


@pytest.fixture(scope="module")
def layout() -> CgroupLayout:
    lay = detect()
    if lay.version is CgroupVersion.V2:
        pytest.skip("host runs cgroup v2 only; v1 tests need v1 controllers")
    return lay


@pytest.fixture
def parent(layout: CgroupLayout) -> Iterator[V1Cgroup]:
    unified = layout.v2_mount if layout.version is CgroupVersion.HYBRID else None
    cg = V1Cgroup(layout.v1_mounts, f"/crishim-test-{uuid.uuid4().hex[:12]}", unified)
    cg.create()
    yield cg
    cg.remove(timeout=10)
    leftovers = [d for d in [*layout.v1_mounts.values(), unified] if d and os.path.exists(d + cg.path)]
    assert leftovers == [], f"cgroup dirs left behind: {leftovers}"


def _spawn(args: list[str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, **kw)  # type: ignore[call-overload]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=10)


def test_busy_process_shows_rising_cpu_and_nano_cores(parent: V1Cgroup) -> None:
    child = V1Cgroup(parent.mounts, parent.path + "/busy", parent.unified)
    child.create()
    proc = _spawn([BUSYBOX, "sh", "-c", "while :; do :; done"])
    try:
        child.add_process(proc.pid)
        assert child.pids() == [proc.pid]
        sampler = StatsSampler()
        first = sampler.sample("busy", read_cgroup_stats(child.path, "cgroupfs"))
        time.sleep(0.5)  # the interval the CPU rate is measured over
        second = sampler.sample("busy", read_cgroup_stats(child.path, "cgroupfs"))
        assert second.cpu.usage_core_ns > first.cpu.usage_core_ns
        assert second.cpu.usage_nano_cores is not None
        # One spinning shell: most of a core over the interval.
        assert second.cpu.usage_nano_cores > 300_000_000
        assert second.process is not None
        assert second.process.process_count >= 1
        if parent.unified and os.path.exists(os.path.join(parent.unified, "cpu.pressure")):
            assert second.cpu.psi is not None
            assert second.io is not None
            assert second.io.psi is not None
    finally:
        _kill(proc)


def test_memory_allocation_grows_working_set(parent: V1Cgroup) -> None:
    child = V1Cgroup(parent.mounts, parent.path + "/mem", parent.unified)
    child.create()
    # Wait for "go", touch 96 MiB (bytearray zero-fills every page), report, wait for EOF.
    script = "\n".join(
        [
            "import sys",
            "sys.stdin.readline()",
            "b = bytearray(96 << 20)",
            "print('ok', flush=True)",
            "sys.stdin.read()",
        ]
    )
    proc = _spawn([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        child.add_process(proc.pid)
        before = child.stats().memory
        assert before is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ok\n"
        after = child.stats().memory
        assert after is not None
        assert after.working_set_bytes - before.working_set_bytes >= 90 << 20
        assert after.rss_bytes >= 90 << 20
        assert after.page_faults > before.page_faults
        assert after.limit_bytes is None
        assert after.available_bytes is None
    finally:
        proc.stdin.close()
        proc.stdout.close()
        _kill(proc)


def test_limits_are_written_and_read_back(parent: V1Cgroup) -> None:
    child = V1Cgroup(parent.mounts, parent.path + "/lim", parent.unified)
    child.create()
    child.set_resources(
        Resources(
            cpu_shares=512,
            cpu_period=100_000,
            cpu_quota=50_000,
            memory_limit=128 << 20,
            memory_swap_limit=128 << 20,
            cpuset_cpus="0",
            pids_limit=64,
        )
    )

    def read(controller: str, name: str) -> str:
        with open(os.path.join(child.dir(controller), name)) as f:
            return f.read().strip()

    assert read("cpu", "cpu.shares") == "512"
    assert read("cpu", "cpu.cfs_quota_us") == "50000"
    assert read("cpuset", "cpuset.cpus") == "0"
    assert read("pids", "pids.max") == "64"
    assert child.oom_kills() == 0
    st = child.stats()
    assert st.memory is not None
    assert st.memory.limit_bytes == 128 << 20
    assert st.memory.available_bytes == (128 << 20) - st.memory.working_set_bytes
    assert st.process is not None
    assert st.process.limit == 64
    if os.path.exists(os.path.join(child.dir("memory"), "memory.memsw.limit_in_bytes")):
        assert read("memory", "memory.memsw.limit_in_bytes") == str(128 << 20)
    # Raising memory above the current memsw needs memsw first; lowering needs memory first.
    child.set_resources(Resources(memory_limit=256 << 20, memory_swap_limit=512 << 20))
    assert read("memory", "memory.limit_in_bytes") == str(256 << 20)
    child.set_resources(Resources(memory_limit=64 << 20, memory_swap_limit=64 << 20))
    assert read("memory", "memory.limit_in_bytes") == str(64 << 20)
    child.set_resources(Resources(memory_limit=-1, memory_swap_limit=-1, cpu_quota=-1, pids_limit=-1))
    unlimited = child.stats().memory
    assert unlimited is not None
    assert unlimited.limit_bytes is None
    assert read("pids", "pids.max") == "max"
    with pytest.raises(FailedPrecondition, match="cgroup v2"):
        child.set_resources(Resources(unified={"memory.high": "1"}))


def test_remove_retries_while_processes_drain_and_leaves_nothing(parent: V1Cgroup) -> None:
    nested = V1Cgroup(parent.mounts, parent.path + "/a/b/c", parent.unified)
    nested.create()
    proc = _spawn([BUSYBOX, "sleep", "60"])
    nested.add_process(proc.pid)
    with pytest.raises(Unavailable, match="still has processes"):
        parent.remove(timeout=0.2)
    proc.kill()  # no wait(): the task is still exiting when remove() starts
    parent.remove(timeout=10)
    proc.wait(timeout=10)
    for mount in parent.mounts.values():
        assert not os.path.exists(mount + parent.path)
    assert not parent.exists()


def test_hugetlb_usage_is_reported_per_page_size(layout: CgroupLayout, parent: V1Cgroup) -> None:
    assert "hugetlb" not in layout.v2_controllers, "hugetlb is still on v2: scripts/setup's fix did not run"
    if "hugetlb" not in parent.mounts:
        pytest.skip("this kernel has no hugetlb controller")
    sizes = [h.page_size for h in parent.stats().hugetlb]
    assert "2MB" in sizes
    parent.set_resources(Resources(hugepage_limits={"2MB": 4 << 20}))
    limits = {h.page_size: h.limit_bytes for h in parent.stats().hugetlb}
    assert limits["2MB"] == 4 << 20


def test_host_layout_is_detected(layout: CgroupLayout) -> None:
    assert os.path.isdir(layout.v1_mounts["memory"])
    assert os.path.exists(os.path.join(layout.v1_mounts["cpuacct"], "cpuacct.usage"))
    if layout.version is CgroupVersion.HYBRID:
        # scripts/setup moved every v2 controller to a v1 hierarchy, so crun runs here.
        assert not hybrid_blocks_crun(layout), f"v2 still holds {sorted(layout.v2_controllers)}: run scripts/setup"
