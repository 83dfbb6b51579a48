"""What cAdvisor reports of a cgroup beyond CgroupStats, read from the cgroup's own files.

The kubelet's /metrics/cadvisor, served from CRI metrics, shows user and system CPU
time, CFS throttling, page cache, mapped files, kernel memory, the failure counter,
the peak, OOM kills, block I/O, the limits set on the cgroup (container_spec_*) and
what its processes hold open. v1 and v2 keep each in a file of their own; both are
read here into the same records, with cAdvisor's meaning of each value (v1 memory
values are the hierarchical `total_*` ones, a limit that is not set reads 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .blkio import BlkioDevice, read_v1, read_v2
from .errors import NotFound
from .files import read_kv, read_opt_int, read_opt_text
from .paths import controller_dir
from .tasks import TaskCounts, count_tasks, max_open_files
from .v1 import V1Cgroup
from .v2 import V2Cgroup

# The kernel's "unlimited" v1 page counter is PAGE_COUNTER_MAX pages: anything this large is no limit.
_UNLIMITED = 1 << 62
# Kernel memory v2 lists apart when memory.stat has no "kernel" line (before 5.18).
_V2_KERNEL_PARTS = ("kernel_stack", "pagetables", "percpu", "sock", "slab", "vmalloc")


@dataclass(frozen=True, slots=True)
class CpuDetail:
    user_ns: int
    system_ns: int
    periods: int  # CFS enforcement periods elapsed
    throttled_periods: int
    throttled_ns: int


@dataclass(frozen=True, slots=True)
class MemoryDetail:
    cache: int  # page cache
    mapped_file: int
    kernel: int
    swap: int
    failcnt: int  # times usage hit the limit (v2: memory.events max)
    max_usage: int  # the peak, 0 where the kernel keeps none
    pgfault: int
    pgmajfault: int


@dataclass(frozen=True, slots=True)
class CgroupSpec:
    """The limits set on the cgroup, as container_spec_* report them; 0 means not set."""

    cpu_period: int  # microseconds
    cpu_quota: int  # microseconds per period
    cpu_shares: int  # v1 shares (v2's weight converted back, as cAdvisor does)
    memory_limit: int
    memory_swap_limit: int
    memory_reservation: int  # v1 soft limit, v2 memory.min


@dataclass(frozen=True, slots=True)
class CgroupDetail:
    cpu: CpuDetail
    memory: MemoryDetail | None  # None without a memory controller
    spec: CgroupSpec
    oom_kills: int
    tasks: TaskCounts
    blkio: tuple[BlkioDevice, ...]
    max_open_files: int | None  # soft limit of the container's first process; None: unknown or unlimited


def read_detail(cgroup: V1Cgroup | V2Cgroup, pid: int = 0) -> CgroupDetail:
    """The detail of `cgroup`; `pid` is its container's first process (0: none, as for a pod).

    Blocking (reads files): call it via asyncio.to_thread from async code.
    """
    if isinstance(cgroup, V2Cgroup):
        return _read_v2(cgroup.dir, pid)
    return _read_v1(cgroup, pid)


def weight_to_shares(weight: int) -> int:
    """v2 cpu.weight [1, 10000] back to v1 cpu.shares [2, 262144], the inverse of the runtimes' mapping."""
    return 2 + ((weight - 1) * 262142) // 9999


def _limit(value: int | None) -> int:
    return 0 if value is None or value < 0 or value >= _UNLIMITED else value


def _read_v2(d: str, pid: int) -> CgroupDetail:
    if not os.path.isdir(d):
        raise NotFound(f"cgroup {d} does not exist")
    cpu_stat = read_kv(os.path.join(d, "cpu.stat"))
    cpu = CpuDetail(
        user_ns=cpu_stat.get("user_usec", 0) * 1000,
        system_ns=cpu_stat.get("system_usec", 0) * 1000,
        periods=cpu_stat.get("nr_periods", 0),
        throttled_periods=cpu_stat.get("nr_throttled", 0),
        throttled_ns=cpu_stat.get("throttled_usec", 0) * 1000,
    )
    events = read_kv(os.path.join(d, "memory.events"))
    memory = None
    if os.path.exists(os.path.join(d, "memory.current")):
        st = read_kv(os.path.join(d, "memory.stat"))
        memory = MemoryDetail(
            cache=st.get("file", 0),
            mapped_file=st.get("file_mapped", 0),
            kernel=st["kernel"] if "kernel" in st else sum(st.get(k, 0) for k in _V2_KERNEL_PARTS),
            swap=read_opt_int(os.path.join(d, "memory.swap.current")) or 0,
            failcnt=events.get("max", 0),
            max_usage=read_opt_int(os.path.join(d, "memory.peak")) or 0,
            pgfault=st.get("pgfault", 0),
            pgmajfault=st.get("pgmajfault", 0),
        )
    return CgroupDetail(
        cpu=cpu,
        memory=memory,
        spec=_spec_v2(d),
        oom_kills=events.get("oom_kill", 0),
        tasks=count_tasks(d),
        blkio=read_v2(d),
        max_open_files=max_open_files(pid),
    )


def _spec_v2(d: str) -> CgroupSpec:
    quota, _, period = (read_opt_text(os.path.join(d, "cpu.max")) or "max 0").partition(" ")
    weight = read_opt_int(os.path.join(d, "cpu.weight"))
    return CgroupSpec(
        cpu_period=int(period) if period.strip().isdigit() else 0,
        cpu_quota=int(quota) if quota.isdigit() else 0,
        cpu_shares=weight_to_shares(weight) if weight else 0,
        memory_limit=_limit(read_opt_int(os.path.join(d, "memory.max"))),
        memory_swap_limit=_limit(read_opt_int(os.path.join(d, "memory.swap.max"))),
        memory_reservation=_limit(read_opt_int(os.path.join(d, "memory.min"))),
    )


def _v1_dir(cgroup: V1Cgroup, controller: str) -> str | None:
    """The cgroup's directory in `controller`'s hierarchy, None when the controller is not mounted."""
    mount = cgroup.mounts.get(controller)
    return controller_dir(mount, cgroup.path) if mount is not None else None


def _read_v1(cgroup: V1Cgroup, pid: int) -> CgroupDetail:
    cpuacct = _v1_dir(cgroup, "cpuacct")
    if cpuacct is None or not os.path.isdir(cpuacct):
        raise NotFound(f"cgroup {cgroup.path} does not exist (no cpuacct directory)")
    cpu_dir = _v1_dir(cgroup, "cpu") or cpuacct
    ticks = read_kv(os.path.join(cpuacct, "cpuacct.stat"))
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    cpu_stat = read_kv(os.path.join(cpu_dir, "cpu.stat"))
    cpu = CpuDetail(
        user_ns=ticks.get("user", 0) * tick_ns,
        system_ns=ticks.get("system", 0) * tick_ns,
        periods=cpu_stat.get("nr_periods", 0),
        throttled_periods=cpu_stat.get("nr_throttled", 0),
        throttled_ns=cpu_stat.get("throttled_time", 0),
    )
    memory_dir = _v1_dir(cgroup, "memory")
    memory = _memory_v1(memory_dir) if memory_dir is not None and os.path.isdir(memory_dir) else None
    oom = read_kv(os.path.join(memory_dir, "memory.oom_control")).get("oom_kill", 0) if memory_dir else 0
    blkio_dir = _v1_dir(cgroup, "blkio")
    return CgroupDetail(
        cpu=cpu,
        memory=memory,
        spec=_spec_v1(cpu_dir, memory_dir),
        oom_kills=oom,
        tasks=count_tasks(cpu_dir),
        blkio=read_v1(blkio_dir) if blkio_dir is not None else (),
        max_open_files=max_open_files(pid),
    )


def _memory_v1(d: str) -> MemoryDetail:
    st = read_kv(os.path.join(d, "memory.stat"))
    return MemoryDetail(
        cache=st.get("total_cache", st.get("cache", 0)),
        mapped_file=st.get("total_mapped_file", st.get("mapped_file", 0)),
        kernel=read_opt_int(os.path.join(d, "memory.kmem.usage_in_bytes")) or 0,
        swap=st.get("total_swap", st.get("swap", 0)),
        failcnt=read_opt_int(os.path.join(d, "memory.failcnt")) or 0,
        max_usage=read_opt_int(os.path.join(d, "memory.max_usage_in_bytes")) or 0,
        pgfault=st.get("pgfault", 0),
        pgmajfault=st.get("pgmajfault", 0),
    )


def _spec_v1(cpu_dir: str, memory_dir: str | None) -> CgroupSpec:
    def memory_file(name: str) -> int:
        return _limit(read_opt_int(os.path.join(memory_dir, name))) if memory_dir else 0

    return CgroupSpec(
        cpu_period=read_opt_int(os.path.join(cpu_dir, "cpu.cfs_period_us")) or 0,
        cpu_quota=_limit(read_opt_int(os.path.join(cpu_dir, "cpu.cfs_quota_us"))),
        cpu_shares=read_opt_int(os.path.join(cpu_dir, "cpu.shares")) or 0,
        memory_limit=memory_file("memory.limit_in_bytes"),
        memory_swap_limit=memory_file("memory.memsw.limit_in_bytes"),
        memory_reservation=memory_file("memory.soft_limit_in_bytes"),
    )
