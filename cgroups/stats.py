"""Stats of a cgroup as the kubelet wants them, on v1, hybrid and v2 hosts.

The kubelet asks for CPU as cumulative core-nanoseconds *and* as nano-cores
averaged over the last interval; the kernel only has the first, so
StatsSampler keeps the previous sample per cgroup and derives the rate.
"""

from __future__ import annotations

import dataclasses
import threading

from .detect import CgroupLayout, CgroupVersion, detect
from .paths import to_fs
from .records import CgroupStats
from .v1 import V1Cgroup
from .v2 import V2Cgroup

_layout_lock = threading.Lock()
_layout: CgroupLayout | None = None


def host_layout() -> CgroupLayout:
    """The host's layout, detected once per process (mounts do not move under a daemon)."""
    global _layout
    with _layout_lock:
        if _layout is None:
            _layout = detect()
        return _layout


def cgroup_for(rel: str, layout: CgroupLayout | None = None) -> V1Cgroup | V2Cgroup:
    """The v1 or v2 accessor for relative cgroup path `rel` on this host (or `layout`)."""
    layout = layout if layout is not None else host_layout()
    if layout.version is CgroupVersion.V2:
        assert layout.v2_mount is not None
        return V2Cgroup(layout.v2_mount, rel)
    unified = layout.v2_mount if layout.version is CgroupVersion.HYBRID else None
    return V1Cgroup(layout.v1_mounts, rel, unified)


def read_cgroup_stats(
    path_or_cgroups_path: str,
    driver: str,
    layout: CgroupLayout | None = None,
    now_ns: int | None = None,
) -> CgroupStats:
    """Stats of one cgroup, given as an OCI cgroupsPath or a relative path ("/a/b").

    usage_nano_cores is None here; pass the result through StatsSampler.sample().
    Blocking (reads files): call it via asyncio.to_thread from async code.
    """
    return cgroup_for(to_fs(path_or_cgroups_path, driver), layout).stats(now_ns)


class StatsSampler:
    """Remembers the last CPU sample per key to fill in usage_nano_cores.

    nano cores = delta usage_core_ns / delta wall-clock ns x 1e9, the rate the
    kubelet shows in `kubectl top`. Thread-safe: stats are read in worker threads.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def sample(self, key: str, stats: CgroupStats) -> CgroupStats:
        cpu = stats.cpu
        with self._lock:
            prev = self._last.get(key)
            if prev is None or cpu.timestamp_ns > prev[0]:
                self._last[key] = (cpu.timestamp_ns, cpu.usage_core_ns)
        nano = None
        if prev is not None and cpu.timestamp_ns > prev[0] and cpu.usage_core_ns >= prev[1]:
            nano = (cpu.usage_core_ns - prev[1]) * 1_000_000_000 // (cpu.timestamp_ns - prev[0])
        elif prev is not None and cpu.timestamp_ns == prev[0]:
            return stats  # same sample read twice: nothing new to derive
        return dataclasses.replace(stats, cpu=dataclasses.replace(cpu, usage_nano_cores=nano))

    def read(self, key: str, path_or_cgroups_path: str, driver: str) -> CgroupStats:
        """read_cgroup_stats() followed by sample()."""
        return self.sample(key, read_cgroup_stats(path_or_cgroups_path, driver))

    def forget(self, key: str) -> None:
        """Drop the state of a removed container or sandbox."""
        with self._lock:
            self._last.pop(key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._last)
