"""One cgroup on a v1 (or hybrid) host: create, remove, limit, read stats.

A v1 cgroup is the same relative path under every controller's hierarchy.
Files are read directly: each stat is one small file, so this is cheaper than
building cgroupspy's tree of the whole hierarchy on every stats call. On a
hybrid host the v2 hierarchy (when runc put the cgroup there too) supplies PSI.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import FailedPrecondition, InvalidArgument, NotFound
from .files import read_int, read_kv, read_opt_int, read_opt_text, read_psi, rmdir_tree, write_value
from .paths import controller_dir
from .records import (
    CgroupStats,
    CpuStats,
    HugetlbStats,
    IoStats,
    MemoryStats,
    ProcessStats,
    PsiStats,
    Resources,
    SwapStats,
)

# The kernel's "unlimited" for v1 page counters is PAGE_COUNTER_MAX pages
# (9223372036854771712 with 4 KiB pages); anything this large means no limit.
_UNLIMITED = 1 << 62
_HUGETLB_USAGE = re.compile(r"^hugetlb\.([0-9]+[KMG]B)\.usage_in_bytes$")


def _limit(value: int | None) -> int | None:
    return None if value is None or value >= _UNLIMITED else value


@dataclass(frozen=True, slots=True)
class V1Cgroup:
    """cgroup `path` ("/kubepods/pod1/cid") under the v1 mounts `mounts` (controller -> mount point)."""

    mounts: Mapping[str, str]
    path: str
    # v2 mount of a hybrid host: PSI is read from there when the cgroup exists in it.
    unified: str | None = None
    controllers: tuple[str, ...] = field(default=())

    def dir(self, controller: str) -> str:
        mount = self.mounts.get(controller)
        if mount is None:
            raise FailedPrecondition(f"the {controller} cgroup controller is not mounted on this host")
        return controller_dir(mount, self.path)

    def _dirs(self, controllers: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """(controller, dir) once per distinct mount point (co-mounted cpu,cpuacct count once)."""
        wanted = list(controllers) if controllers is not None else list(self.controllers or self.mounts)
        seen: set[str] = set()
        out = []
        for name in wanted:
            mount = self.mounts.get(name)
            if mount is None or mount in seen:
                continue
            seen.add(mount)
            out.append((name, controller_dir(mount, self.path)))
        return out

    def _unified_dir(self) -> str | None:
        return controller_dir(self.unified, self.path) if self.unified else None

    def exists(self) -> bool:
        return any(os.path.isdir(d) for _, d in self._dirs())

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self, controllers: Iterable[str] | None = None) -> None:
        """mkdir the cgroup on every (given) controller; cpuset levels inherit cpus and mems.

        A new v1 cpuset cgroup starts with empty cpus/mems and no task may join
        it, so each level created here copies its parent's values.
        """
        for name, d in self._dirs(controllers):
            if name == "cpuset" or "cpuset" in self._comounted(name):
                self._create_cpuset(d)
            else:
                os.makedirs(d, exist_ok=True)
        # On a hybrid host runc also places containers in the v2 tree (PSI lives there).
        if controllers is None and (u := self._unified_dir()) is not None:
            os.makedirs(u, exist_ok=True)

    def _comounted(self, name: str) -> list[str]:
        mount = self.mounts[name]
        return [c for c, m in self.mounts.items() if m == mount]

    def _create_cpuset(self, d: str) -> None:
        missing = []
        cur = d
        while not os.path.isdir(cur):
            missing.append(cur)
            cur = os.path.dirname(cur)
        for level in reversed(missing):
            os.mkdir(level)
            parent = os.path.dirname(level)
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (read_opt_text(os.path.join(level, f)) or "").strip():
                    continue
                value = (read_opt_text(os.path.join(parent, f)) or "").strip()
                if value:
                    write_value(os.path.join(level, f), value)

    def remove(self, timeout: float = 5.0) -> None:
        """rmdir this cgroup and its children on every controller; missing is fine."""
        dirs = [d for _, d in self._dirs()]
        if (u := self._unified_dir()) is not None:
            dirs.append(u)
        for d in dirs:
            rmdir_tree(d, timeout)

    def add_process(self, pid: int) -> None:
        dirs = [d for _, d in self._dirs()]
        if (u := self._unified_dir()) is not None:
            dirs.append(u)
        for d in dirs:
            if os.path.isdir(d):
                write_value(os.path.join(d, "cgroup.procs"), pid)

    def pids(self) -> list[int]:
        for _, d in self._dirs():
            text = read_opt_text(os.path.join(d, "cgroup.procs"))
            if text is not None:
                return [int(x) for x in text.split()]
        raise NotFound(f"cgroup {self.path} does not exist")

    # -- limits --------------------------------------------------------------------------------

    def set_resources(self, res: Resources) -> None:
        """Write the limits in `res`; None fields stay as they are."""
        if res.unified:
            raise FailedPrecondition(
                f"unified cgroup settings {sorted(res.unified)} need cgroup v2; this host runs cgroup v1"
            )
        if res.cpu_shares is not None:
            write_value(os.path.join(self.dir("cpu"), "cpu.shares"), res.cpu_shares)
        if res.cpu_period is not None:
            write_value(os.path.join(self.dir("cpu"), "cpu.cfs_period_us"), res.cpu_period)
        if res.cpu_quota is not None:
            write_value(os.path.join(self.dir("cpu"), "cpu.cfs_quota_us"), res.cpu_quota)
        self._set_memory(res.memory_limit, res.memory_swap_limit)
        if res.cpuset_cpus is not None:
            write_value(os.path.join(self.dir("cpuset"), "cpuset.cpus"), res.cpuset_cpus)
        if res.cpuset_mems is not None:
            write_value(os.path.join(self.dir("cpuset"), "cpuset.mems"), res.cpuset_mems)
        for size, limit in res.hugepage_limits.items():
            f = os.path.join(self.dir("hugetlb"), f"hugetlb.{size}.limit_in_bytes")
            if not os.path.exists(f):
                raise InvalidArgument(f"hugepage size {size!r} is not supported here ({f} is missing)")
            write_value(f, limit)
        if res.pids_limit is not None:
            value = "max" if res.pids_limit <= 0 else str(res.pids_limit)
            write_value(os.path.join(self.dir("pids"), "pids.max"), value)

    def _set_memory(self, memory: int | None, memsw: int | None) -> None:
        if memory is None and memsw is None:
            return
        d = self.dir("memory")
        mem_file = os.path.join(d, "memory.limit_in_bytes")
        sw_file = os.path.join(d, "memory.memsw.limit_in_bytes")
        # Without swap accounting (swapaccount=0) there is no memsw file and swap cannot be limited.
        if memsw is not None and not os.path.exists(sw_file):
            memsw = None
        if memsw is not None and memory is not None and memsw != -1 and memory != -1 and memsw < memory:
            raise InvalidArgument(f"memory_swap_limit_in_bytes ({memsw}) must be >= memory_limit_in_bytes ({memory})")
        # memsw must stay >= memory at every step: when raising memory, raise memsw first.
        current = _limit(read_opt_int(mem_file))
        raising = memory is not None and (memory == -1 or (current is not None and memory > current))
        if memsw is not None and raising:
            write_value(sw_file, memsw)
            memsw = None
        if memory is not None:
            write_value(mem_file, memory)
        if memsw is not None:
            write_value(sw_file, memsw)

    def oom_kills(self) -> int | None:
        """memory.oom_control `oom_kill` (kernel 4.13+); None when the cgroup is gone or the kernel lacks it."""
        try:
            d = self.dir("memory")
        except FailedPrecondition:
            return None
        if not os.path.isdir(d):
            return None
        return read_kv(os.path.join(d, "memory.oom_control")).get("oom_kill")

    # -- stats ---------------------------------------------------------------------------------

    def stats(self, now_ns: int | None = None) -> CgroupStats:
        """Read CPU, memory, swap, pids, hugetlb and (hybrid) PSI of this cgroup."""
        now = now_ns if now_ns is not None else time.time_ns()
        cpuacct = self.dir("cpuacct")
        if not os.path.isdir(cpuacct):
            raise NotFound(f"cgroup {self.path} does not exist (no {cpuacct})")
        u = self._unified_dir()
        cpu_psi = read_psi(os.path.join(u, "cpu.pressure")) if u else None
        mem_psi = read_psi(os.path.join(u, "memory.pressure")) if u else None
        io_psi = read_psi(os.path.join(u, "io.pressure")) if u else None
        cpu = CpuStats(now, read_int(os.path.join(cpuacct, "cpuacct.usage")), None, cpu_psi)
        memory, swap = self._memory_stats(now, mem_psi)
        return CgroupStats(
            timestamp_ns=now,
            cpu=cpu,
            memory=memory,
            swap=swap,
            process=self._process_stats(now),
            io=IoStats(now, io_psi),
            hugetlb=self._hugetlb_stats(),
        )

    def _memory_stats(self, now: int, psi: PsiStats | None) -> tuple[MemoryStats | None, SwapStats | None]:
        if "memory" not in self.mounts:
            return None, None
        d = self.dir("memory")
        usage = read_opt_int(os.path.join(d, "memory.usage_in_bytes"))
        if usage is None:
            return None, None
        st = read_kv(os.path.join(d, "memory.stat"))
        inactive_file = st.get("total_inactive_file", st.get("inactive_file", 0))
        working_set = max(0, usage - inactive_file)
        limit = _limit(read_opt_int(os.path.join(d, "memory.limit_in_bytes")))
        memory = MemoryStats(
            timestamp_ns=now,
            usage_bytes=usage,
            working_set_bytes=working_set,
            rss_bytes=st.get("total_rss", st.get("rss", 0)),
            page_faults=st.get("total_pgfault", st.get("pgfault", 0)),
            major_page_faults=st.get("total_pgmajfault", st.get("pgmajfault", 0)),
            limit_bytes=limit,
            available_bytes=max(0, limit - working_set) if limit is not None else None,
            psi=psi,
        )
        swap = None
        memsw = read_opt_int(os.path.join(d, "memory.memsw.usage_in_bytes"))
        if memsw is not None:
            swap_usage = max(0, memsw - usage)
            memsw_limit = _limit(read_opt_int(os.path.join(d, "memory.memsw.limit_in_bytes")))
            available = None
            if memsw_limit is not None and limit is not None:
                available = max(0, memsw_limit - limit - swap_usage)
            swap = SwapStats(now, swap_usage, available)
        return memory, swap

    def _process_stats(self, now: int) -> ProcessStats | None:
        if "pids" in self.mounts:
            d = self.dir("pids")
            current = read_opt_int(os.path.join(d, "pids.current"))
            if current is not None:
                return ProcessStats(now, current, read_opt_int(os.path.join(d, "pids.max")))
        try:
            return ProcessStats(now, len(self.pids()), None)
        except NotFound:
            return None

    def _hugetlb_stats(self) -> tuple[HugetlbStats, ...]:
        if "hugetlb" not in self.mounts:
            return ()
        d = self.dir("hugetlb")
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return ()
        out = []
        for name in names:
            m = _HUGETLB_USAGE.match(name)
            if not m:
                continue
            size = m.group(1)
            out.append(
                HugetlbStats(
                    page_size=size,
                    usage_bytes=read_int(os.path.join(d, name)),
                    max_usage_bytes=read_opt_int(os.path.join(d, f"hugetlb.{size}.max_usage_in_bytes")),
                    limit_bytes=_limit(read_opt_int(os.path.join(d, f"hugetlb.{size}.limit_in_bytes"))),
                )
            )
        return tuple(out)
