"""One cgroup on a v2 (unified) host: create, remove, limit, read stats.

All controllers share one tree. A cgroup only gets a controller's files when
every ancestor lists it in cgroup.subtree_control, so create() enables them on
the way down. Files are read directly; each is one line or a key/value table.
"""

from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass

from .errors import FailedPrecondition, InvalidArgument, NotFound
from .files import read_kv, read_opt_int, read_opt_text, read_psi, rmdir_tree, write_value
from .paths import controller_dir
from .records import (
    CgroupStats,
    CpuStats,
    HugetlbStats,
    IoStats,
    MemoryStats,
    ProcessStats,
    Resources,
    SwapStats,
    shares_to_weight,
)

_HUGETLB_CURRENT = re.compile(r"^hugetlb\.([0-9]+[KMG]B)\.current$")
_UNIFIED_KEY = re.compile(r"^[a-z0-9_]+\.[a-z0-9_.]+$")
# Controllers a runtime manages; the others (rdma, misc) stay as the host set them.
MANAGED_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "hugetlb", "pids")


@dataclass(frozen=True, slots=True)
class V2Cgroup:
    """cgroup `path` ("/kubepods.slice/...") under the cgroup2 mount `mount`."""

    mount: str
    path: str

    @property
    def dir(self) -> str:
        return controller_dir(self.mount, self.path)

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self) -> None:
        """mkdir the cgroup, enabling the managed controllers in each ancestor's subtree_control."""
        rel = [p for p in self.path.strip("/").split("/") if p]
        cur = self.mount
        for part in rel:
            self._enable_controllers(cur)
            cur = os.path.join(cur, part)
            try:
                os.mkdir(cur)
            except FileExistsError:
                pass

    @staticmethod
    def _enable_controllers(d: str) -> None:
        available = set((read_opt_text(os.path.join(d, "cgroup.controllers")) or "").split())
        enabled = set((read_opt_text(os.path.join(d, "cgroup.subtree_control")) or "").split())
        for name in MANAGED_CONTROLLERS:
            if name in available and name not in enabled:
                try:
                    write_value(os.path.join(d, "cgroup.subtree_control"), f"+{name}")
                except FailedPrecondition:
                    # EBUSY: d holds processes itself ("no internal processes"); the
                    # child then simply lacks this controller, as systemd would leave it.
                    continue

    def remove(self, timeout: float = 5.0) -> None:
        rmdir_tree(self.dir, timeout)

    def add_process(self, pid: int) -> None:
        write_value(os.path.join(self.dir, "cgroup.procs"), pid)

    def pids(self) -> list[int]:
        text = read_opt_text(os.path.join(self.dir, "cgroup.procs"))
        if text is None:
            raise NotFound(f"cgroup {self.path} does not exist under {self.mount}")
        return [int(x) for x in text.split()]

    # -- limits --------------------------------------------------------------------------------

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def set_resources(self, res: Resources) -> None:
        """Write the limits in `res` (v1-style values converted); None fields stay as they are."""
        if not self.exists():
            raise NotFound(f"cgroup {self.path} does not exist under {self.mount}")
        if res.cpu_shares is not None:
            write_value(self._file("cpu.weight"), shares_to_weight(res.cpu_shares))
        if res.cpu_quota is not None or res.cpu_period is not None:
            quota = res.cpu_quota
            if quota is None:
                # Only the period changes: keep the quota that is set now.
                current = (read_opt_text(self._file("cpu.max")) or "max").split()
                quota = -1 if not current or current[0] == "max" else int(current[0])
            write_value(self._file("cpu.max"), _cpu_max(quota, res.cpu_period))
        self._set_memory(res.memory_limit, res.memory_swap_limit)
        if res.cpuset_cpus is not None:
            write_value(self._file("cpuset.cpus"), res.cpuset_cpus)
        if res.cpuset_mems is not None:
            write_value(self._file("cpuset.mems"), res.cpuset_mems)
        for size, limit in res.hugepage_limits.items():
            f = self._file(f"hugetlb.{size}.max")
            if not os.path.exists(f):
                raise InvalidArgument(f"hugepage size {size!r} is not supported here ({f} is missing)")
            write_value(f, limit)
        if res.pids_limit is not None:
            write_value(self._file("pids.max"), "max" if res.pids_limit <= 0 else str(res.pids_limit))
        for key, value in res.unified.items():
            if not _UNIFIED_KEY.match(key):
                raise InvalidArgument(f"unified cgroup key {key!r} is not a cgroup file name (like memory.high)")
            f = self._file(key)
            if not os.path.exists(f):
                raise InvalidArgument(
                    f"unified cgroup key {key!r} does not exist in {self.dir}: is its controller enabled?"
                )
            write_value(f, value)

    def _set_memory(self, memory: int | None, memsw: int | None) -> None:
        if memory is not None:
            write_value(self._file("memory.max"), "max" if memory == -1 else str(memory))
        if memsw is None:
            return
        swap_file = self._file("memory.swap.max")
        if not os.path.exists(swap_file):
            return  # no swap accounting on this kernel: nothing can be limited
        if memsw == -1:
            write_value(swap_file, "max")
            return
        if memory is None or memory == -1:
            raise InvalidArgument(
                "memory_swap_limit_in_bytes needs memory_limit_in_bytes: cgroup v2 limits swap "
                "as the difference of the two"
            )
        if memsw < memory:
            raise InvalidArgument(f"memory_swap_limit_in_bytes ({memsw}) must be >= memory_limit_in_bytes ({memory})")
        write_value(swap_file, memsw - memory)

    def oom_kills(self) -> int | None:
        """memory.events `oom_kill`: processes of this cgroup and below the OOM killer killed; None if gone."""
        if not self.exists():
            return None
        return read_kv(os.path.join(self.dir, "memory.events")).get("oom_kill")

    # -- stats ---------------------------------------------------------------------------------

    def stats(self, now_ns: int | None = None) -> CgroupStats:
        now = now_ns if now_ns is not None else time.time_ns()
        d = self.dir
        if not os.path.isdir(d):
            raise NotFound(f"cgroup {self.path} does not exist under {self.mount}")
        cpu_stat = read_kv(os.path.join(d, "cpu.stat"))
        cpu = CpuStats(now, cpu_stat.get("usage_usec", 0) * 1000, None, read_psi(os.path.join(d, "cpu.pressure")))
        memory, swap = self._memory_stats(now)
        current = read_opt_int(os.path.join(d, "pids.current"))
        process = (
            ProcessStats(now, current, read_opt_int(os.path.join(d, "pids.max")))
            if current is not None
            else ProcessStats(now, len(self.pids()), None)
        )
        return CgroupStats(
            timestamp_ns=now,
            cpu=cpu,
            memory=memory,
            swap=swap,
            process=process,
            io=IoStats(now, read_psi(os.path.join(d, "io.pressure"))),
            hugetlb=self._hugetlb_stats(),
        )

    def _memory_stats(self, now: int) -> tuple[MemoryStats | None, SwapStats | None]:
        d = self.dir
        usage = read_opt_int(os.path.join(d, "memory.current"))
        if usage is None:
            return None, None
        st = read_kv(os.path.join(d, "memory.stat"))
        working_set = max(0, usage - st.get("inactive_file", 0))
        limit = read_opt_int(os.path.join(d, "memory.max"))
        memory = MemoryStats(
            timestamp_ns=now,
            usage_bytes=usage,
            working_set_bytes=working_set,
            rss_bytes=st.get("anon", 0),
            page_faults=st.get("pgfault", 0),
            major_page_faults=st.get("pgmajfault", 0),
            limit_bytes=limit,
            available_bytes=max(0, limit - working_set) if limit is not None else None,
            psi=read_psi(os.path.join(d, "memory.pressure")),
        )
        swap = None
        swap_usage = read_opt_int(os.path.join(d, "memory.swap.current"))
        if swap_usage is not None:
            swap_limit = read_opt_int(os.path.join(d, "memory.swap.max"))
            available = max(0, swap_limit - swap_usage) if swap_limit is not None else None
            swap = SwapStats(now, swap_usage, available)
        return memory, swap

    def _hugetlb_stats(self) -> tuple[HugetlbStats, ...]:
        try:
            names = sorted(os.listdir(self.dir))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return ()
            raise
        out = []
        for name in names:
            m = _HUGETLB_CURRENT.match(name)
            if not m:
                continue
            size = m.group(1)
            usage = read_opt_int(os.path.join(self.dir, name))
            out.append(
                HugetlbStats(
                    page_size=size,
                    usage_bytes=usage or 0,
                    max_usage_bytes=None,
                    limit_bytes=read_opt_int(os.path.join(self.dir, f"hugetlb.{size}.max")),
                )
            )
        return tuple(out)


def _cpu_max(quota: int, period: int | None) -> str:
    """cpu.max takes "QUOTA PERIOD" or just "QUOTA"; quota -1 (or <=0) is "max"."""
    q = "max" if quota <= 0 else str(quota)
    return f"{q} {period}" if period is not None else q
