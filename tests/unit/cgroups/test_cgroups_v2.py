"""cgroup v2 code against a fake cgroupfs tree (this host has no v2 controllers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.cgroups.detect import CgroupLayout, CgroupVersion
from crishim.cgroups.errors import InvalidArgument, NotFound
from crishim.cgroups.records import Resources, shares_to_weight
from crishim.cgroups.stats import StatsSampler, read_cgroup_stats
from crishim.cgroups.v2 import V2Cgroup

PSI = "some avg10=1.50 avg60=0.75 avg300=0.25 total=1234\nfull avg10=0.50 avg60=0.10 avg300=0.00 total=99\n"
MEMORY_STAT = "anon 4096000\nfile 2000000\ninactive_file 1000000\nactive_file 1000000\npgfault 555\npgmajfault 7\n"

WRITABLE = (
    "cpu.weight",
    "cpu.max",
    "memory.max",
    "memory.swap.max",
    "cpuset.cpus",
    "cpuset.mems",
    "pids.max",
    "hugetlb.2MB.max",
    "memory.high",
    "cgroup.procs",
)


def _fake_cgroup(root: Path, rel: str, usage_usec: int = 2_000_000) -> Path:
    d = root / rel.strip("/")
    d.mkdir(parents=True)
    files = {
        "cpu.stat": f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 1\n",
        "cpu.pressure": PSI,
        "memory.pressure": PSI,
        "io.pressure": PSI,
        "memory.current": "10000000\n",
        "memory.stat": MEMORY_STAT,
        "memory.max": "max\n",
        "memory.swap.current": "4096\n",
        "memory.swap.max": "max\n",
        "pids.current": "3\n",
        "pids.max": "max\n",
        "hugetlb.2MB.current": "2097152\n",
        "hugetlb.2MB.max": "max\n",
        "cpu.max": "max 100000\n",
        "cgroup.procs": "11\n12\n",
    }
    for name in WRITABLE:
        files.setdefault(name, "")
    for name, content in files.items():
        (d / name).write_text(content)
    return d


def test_stats_read_cpu_memory_swap_pids_hugetlb_and_psi(tmp_path: Path) -> None:
    _fake_cgroup(tmp_path, "/kubepods/pod1/c1")
    st = V2Cgroup(str(tmp_path), "/kubepods/pod1/c1").stats(now_ns=5)
    assert st.cpu.usage_core_ns == 2_000_000_000
    assert st.cpu.usage_nano_cores is None
    assert st.cpu.psi is not None
    assert st.cpu.psi.some.total_ns == 1_234_000
    assert st.cpu.psi.some.avg10 == 1.5
    assert st.cpu.psi.full is not None
    assert st.cpu.psi.full.total_ns == 99_000
    mem = st.memory
    assert mem is not None
    assert mem.usage_bytes == 10_000_000
    assert mem.working_set_bytes == 9_000_000  # usage - inactive_file
    assert mem.rss_bytes == 4_096_000
    assert (mem.page_faults, mem.major_page_faults) == (555, 7)
    assert mem.limit_bytes is None
    assert mem.available_bytes is None
    assert st.swap is not None
    assert st.swap.usage_bytes == 4096
    assert st.swap.available_bytes is None
    assert st.process is not None
    assert st.process.process_count == 3
    assert st.process.limit is None
    assert st.io is not None
    assert st.io.psi is not None
    assert [(h.page_size, h.usage_bytes, h.limit_bytes) for h in st.hugetlb] == [("2MB", 2097152, None)]


def test_memory_limit_gives_available_bytes(tmp_path: Path) -> None:
    d = _fake_cgroup(tmp_path, "/c")
    (d / "memory.max").write_text("20000000\n")
    mem = V2Cgroup(str(tmp_path), "/c").stats().memory
    assert mem is not None
    assert mem.limit_bytes == 20_000_000
    assert mem.available_bytes == 11_000_000


def test_set_resources_writes_v2_files_with_conversions(tmp_path: Path) -> None:
    d = _fake_cgroup(tmp_path, "/pod")
    cg = V2Cgroup(str(tmp_path), "/pod")
    cg.set_resources(
        Resources(
            cpu_shares=1024,
            cpu_quota=50_000,
            cpu_period=100_000,
            memory_limit=256 << 20,
            memory_swap_limit=384 << 20,
            cpuset_cpus="0-1",
            cpuset_mems="0",
            hugepage_limits={"2MB": 4 << 20},
            pids_limit=100,
            unified={"memory.high": "200000000"},
        )
    )
    assert (d / "cpu.weight").read_text() == str(shares_to_weight(1024))
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "memory.max").read_text() == str(256 << 20)
    assert (d / "memory.swap.max").read_text() == str(128 << 20)
    assert (d / "cpuset.cpus").read_text() == "0-1"
    assert (d / "cpuset.mems").read_text() == "0"
    assert (d / "hugetlb.2MB.max").read_text() == str(4 << 20)
    assert (d / "pids.max").read_text() == "100"
    assert (d / "memory.high").read_text() == "200000000"


def test_unlimited_values_become_max(tmp_path: Path) -> None:
    d = _fake_cgroup(tmp_path, "/pod")
    V2Cgroup(str(tmp_path), "/pod").set_resources(
        Resources(cpu_quota=-1, cpu_period=100_000, memory_limit=-1, memory_swap_limit=-1, pids_limit=0)
    )
    assert (d / "cpu.max").read_text() == "max 100000"
    assert (d / "memory.max").read_text() == "max"
    assert (d / "memory.swap.max").read_text() == "max"
    assert (d / "pids.max").read_text() == "max"


def test_period_alone_keeps_the_current_quota(tmp_path: Path) -> None:
    d = _fake_cgroup(tmp_path, "/pod")
    (d / "cpu.max").write_text("30000 100000\n")
    V2Cgroup(str(tmp_path), "/pod").set_resources(Resources(cpu_period=50_000))
    assert (d / "cpu.max").read_text() == "30000 50000"


def test_swap_equal_to_memory_means_no_swap(tmp_path: Path) -> None:
    d = _fake_cgroup(tmp_path, "/pod")
    V2Cgroup(str(tmp_path), "/pod").set_resources(Resources(memory_limit=1 << 20, memory_swap_limit=1 << 20))
    assert (d / "memory.swap.max").read_text() == "0"


def test_swap_below_memory_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    _fake_cgroup(tmp_path, "/pod")
    cg = V2Cgroup(str(tmp_path), "/pod")
    with pytest.raises(InvalidArgument, match="must be >="):
        cg.set_resources(Resources(memory_limit=2 << 20, memory_swap_limit=1 << 20))
    with pytest.raises(InvalidArgument, match="not a cgroup file name"):
        cg.set_resources(Resources(unified={"../etc/passwd": "x"}))
    with pytest.raises(InvalidArgument, match="does not exist"):
        cg.set_resources(Resources(unified={"io.max": "8:0 rbps=1"}))
    with pytest.raises(InvalidArgument, match="hugepage size"):
        cg.set_resources(Resources(hugepage_limits={"1GB": 1 << 30}))


def test_missing_cgroup_is_not_found(tmp_path: Path) -> None:
    cg = V2Cgroup(str(tmp_path), "/nope")
    with pytest.raises(NotFound):
        cg.stats()
    with pytest.raises(NotFound):
        cg.set_resources(Resources(cpu_shares=2))


def test_create_enables_controllers_in_ancestors_and_remove_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids rdma\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    cg = V2Cgroup(str(tmp_path), "/kubepods/pod1")
    cg.create()
    assert (tmp_path / "kubepods/pod1").is_dir()
    # A real kernel accumulates the writes; the fake file keeps the last one.
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+pids"
    cg.create()  # idempotent
    V2Cgroup(str(tmp_path), "/kubepods").remove()
    assert not (tmp_path / "kubepods").exists()


def test_shares_to_weight_matches_runc_endpoints() -> None:
    assert shares_to_weight(2) == 1
    assert shares_to_weight(262144) == 10000
    assert shares_to_weight(1024) == 39
    assert shares_to_weight(1) == 1


def test_read_cgroup_stats_dispatches_to_v2_for_systemd_paths(tmp_path: Path) -> None:
    _fake_cgroup(tmp_path, "/kubepods.slice/kubepods-pod1.slice/crishim-abc.scope")
    layout = CgroupLayout(CgroupVersion.V2, {}, str(tmp_path), frozenset({"cpu"}), True)
    st = read_cgroup_stats("kubepods-pod1.slice:crishim:abc", "systemd", layout=layout)
    assert st.cpu.usage_core_ns == 2_000_000_000


def test_sampler_derives_nano_cores_from_two_samples(tmp_path: Path) -> None:
    _fake_cgroup(tmp_path, "/a", usage_usec=1_000_000)
    layout = CgroupLayout(CgroupVersion.V2, {}, str(tmp_path), frozenset(), True)
    sampler = StatsSampler()
    first = sampler.sample("a", read_cgroup_stats("/a", "cgroupfs", layout, now_ns=10_000_000_000))
    assert first.cpu.usage_nano_cores is None
    (tmp_path / "a/cpu.stat").write_text("usage_usec 1500000\n")
    second = sampler.sample("a", read_cgroup_stats("/a", "cgroupfs", layout, now_ns=11_000_000_000))
    # 0.5 s of CPU in 1 s of wall time = half a core
    assert second.cpu.usage_nano_cores == 500_000_000
    sampler.forget("a")
    assert sampler.keys() == []


def test_oom_kills_come_from_memory_events_and_vanish_with_the_cgroup(tmp_path: Path) -> None:
    d = _fake_cgroup(tmp_path, "/pod/c1")
    cg = V2Cgroup(str(tmp_path), "/pod/c1")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n")
    assert cg.oom_kills() == 1
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 0\noom_kill 0\n")
    assert cg.oom_kills() == 0
    assert V2Cgroup(str(tmp_path), "/pod/gone").oom_kills() is None
