"""Plain records shared by the v1 and v2 readers/writers and by stats.py.

Kept apart from stats.py so v1.py and v2.py can build them without importing
the module that dispatches to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PsiData:
    """One line of a *.pressure file. total_ns is the kernel's microseconds x 1000 (CRI's unit)."""

    total_ns: int
    avg10: float
    avg60: float
    avg300: float


@dataclass(frozen=True, slots=True)
class PsiStats:
    """`some` and `full` pressure; `full` is None where the kernel has no such line."""

    some: PsiData
    full: PsiData | None


@dataclass(frozen=True, slots=True)
class CpuStats:
    timestamp_ns: int
    usage_core_ns: int
    # Average over the interval since the previous sample (StatsSampler); None on the first one.
    usage_nano_cores: int | None
    psi: PsiStats | None


@dataclass(frozen=True, slots=True)
class MemoryStats:
    timestamp_ns: int
    usage_bytes: int
    # usage minus inactive file pages: what the kubelet evicts on (cAdvisor's definition).
    working_set_bytes: int
    rss_bytes: int
    page_faults: int
    major_page_faults: int
    limit_bytes: int | None  # None: unlimited
    available_bytes: int | None  # limit - working set; None when unlimited
    psi: PsiStats | None


@dataclass(frozen=True, slots=True)
class SwapStats:
    timestamp_ns: int
    usage_bytes: int
    available_bytes: int | None  # None when swap is unlimited


@dataclass(frozen=True, slots=True)
class ProcessStats:
    timestamp_ns: int
    process_count: int  # pids.current: tasks (threads) in the cgroup
    limit: int | None  # pids.max; None when unlimited


@dataclass(frozen=True, slots=True)
class HugetlbStats:
    page_size: str  # "2MB", "1GB" as the kernel names its files (and CRI's HugepageLimit)
    usage_bytes: int
    max_usage_bytes: int | None  # v1 only: the high-water mark
    limit_bytes: int | None


@dataclass(frozen=True, slots=True)
class IoStats:
    timestamp_ns: int
    psi: PsiStats | None


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """Everything CRI ContainerStats / PodSandboxStats need from one cgroup."""

    timestamp_ns: int
    cpu: CpuStats
    memory: MemoryStats | None
    swap: SwapStats | None
    process: ProcessStats | None
    io: IoStats | None
    hugetlb: tuple[HugetlbStats, ...] = ()


@dataclass(frozen=True, slots=True)
class Resources:
    """Limits to write to a cgroup. None leaves a setting untouched.

    CRI's LinuxContainerResources uses 0 for "not set": convert those to None.
    cpu_quota -1, memory_swap_limit -1 and pids_limit -1 (or 0) mean unlimited.
    memory_swap_limit is memory + swap, as CRI's memory_swap_limit_in_bytes and
    v1's memory.memsw.limit_in_bytes; v2 gets swap = memory_swap_limit - memory_limit.
    """

    cpu_shares: int | None = None
    cpu_quota: int | None = None  # microseconds per period
    cpu_period: int | None = None  # microseconds
    memory_limit: int | None = None  # bytes, -1 unlimited
    memory_swap_limit: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    hugepage_limits: Mapping[str, int] = field(default_factory=dict)  # "2MB" -> bytes
    pids_limit: int | None = None
    unified: Mapping[str, str] = field(default_factory=dict)  # cgroup v2 file -> value


def shares_to_weight(shares: int) -> int:
    """v1 cpu.shares [2, 262144] -> v2 cpu.weight [1, 10000], linearly, as runc converts."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142
