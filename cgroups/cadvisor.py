"""cAdvisor-named samples of one pod or container, for CRI ListPodSandboxMetrics.

The kubelet serves these as /metrics/cadvisor (see cadvisor_descriptors.py). Each
sample's value follows cAdvisor's meaning; CRI Metric values are uint64 and the
kubelet exposes them unchanged, so seconds-named metrics carry whole seconds.
Metrics cAdvisor only reports under a condition keep it: CFS throttling and
container_spec_cpu_quota only where a quota is set, the writable-layer filesystem
and the open-file limit only for containers, the network only for pods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .cadvisor_descriptors import BASE_LABEL_KEYS, DESCRIPTOR_BY_NAME, DESCRIPTORS, Descriptor, MetricType
from .detail import CgroupDetail
from .records import CgroupStats, PsiStats

__all__ = [
    "BASE_LABEL_KEYS",
    "DESCRIPTORS",
    "Descriptor",
    "Filesystem",
    "MetricValue",
    "NetworkCounters",
    "cgroup_metrics",
    "list_descriptors",
]
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class MetricValue:
    """One sample: maps 1:1 onto CRI Metric (name, timestamp, metric_type, label_values, value)."""

    name: str
    type: MetricType
    label_values: tuple[str, ...]
    value: int
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class NetworkCounters:
    """Counters of one interface in the pod's network namespace."""

    interface: str
    rx_bytes: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int
    rx_packets: int = 0
    tx_packets: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0


@dataclass(frozen=True, slots=True)
class Filesystem:
    """A container's writable layer on the filesystem that holds it."""

    device: str
    usage_bytes: int
    capacity_bytes: int
    inodes: int
    inodes_free: int


def list_descriptors() -> tuple[Descriptor, ...]:
    """What ListMetricDescriptors returns: every metric cgroup_metrics can emit."""
    return DESCRIPTORS


@dataclass(slots=True)
class _Samples:
    base: tuple[str, ...]  # the values of id, name, image
    timestamp_ns: int
    out: list[MetricValue] = field(default_factory=list)

    def add(self, name: str, value: int, *labels: str) -> None:
        kind = DESCRIPTOR_BY_NAME[name].type
        self.out.append(MetricValue(name, kind, (*self.base, *labels), max(0, int(value)), self.timestamp_ns))


def cgroup_metrics(
    stats: CgroupStats,
    cgroup_id: str,
    name: str,
    image: str,
    network: Sequence[NetworkCounters] = (),
    *,
    detail: CgroupDetail | None = None,
    filesystem: Filesystem | None = None,
    start_time_ns: int = 0,
) -> list[MetricValue]:
    """One cgroup's samples: its stats, the detail read beside them, a pod's interfaces.

    cgroup_id is the cgroup path ("/kubepods/burstable/podUID/CID"), name the container
    name ("" for the pod), image its image reference ("" for the pod).
    """
    s = _Samples((cgroup_id, name, image), stats.timestamp_ns)
    s.add("container_last_seen", stats.timestamp_ns // NS_PER_S)
    if start_time_ns > 0:
        s.add("container_start_time_seconds", start_time_ns // NS_PER_S)
    _cpu(s, stats, detail)
    _memory(s, stats, detail)
    _processes(s, stats, detail)
    _pressure(s, stats)
    for page in stats.hugetlb:
        s.add("container_hugetlb_usage_bytes", page.usage_bytes, page.page_size)
        s.add("container_hugetlb_max_usage_bytes", page.max_usage_bytes or 0, page.page_size)
    if detail is not None:
        _spec(s, detail)
        _blkio(s, detail)
    if filesystem is not None:
        _filesystem(s, filesystem)
    _network(s, network)
    return s.out


def _cpu(s: _Samples, stats: CgroupStats, detail: CgroupDetail | None) -> None:
    s.add("container_cpu_usage_seconds_total", stats.cpu.usage_core_ns // NS_PER_S, "total")
    if detail is None:
        return
    cpu = detail.cpu
    s.add("container_cpu_user_seconds_total", cpu.user_ns // NS_PER_S)
    s.add("container_cpu_system_seconds_total", cpu.system_ns // NS_PER_S)
    if detail.spec.cpu_quota > 0:
        s.add("container_cpu_cfs_periods_total", cpu.periods)
        s.add("container_cpu_cfs_throttled_periods_total", cpu.throttled_periods)
        s.add("container_cpu_cfs_throttled_seconds_total", cpu.throttled_ns // NS_PER_S)


def _memory(s: _Samples, stats: CgroupStats, detail: CgroupDetail | None) -> None:
    mem = stats.memory
    if mem is None:
        return
    s.add("container_memory_usage_bytes", mem.usage_bytes)
    s.add("container_memory_working_set_bytes", mem.working_set_bytes)
    s.add("container_memory_rss", mem.rss_bytes)
    extra = detail.memory if detail is not None else None
    # "container" counts the cgroup's own faults, "hierarchy" its subtree's too.
    s.add("container_memory_failures_total", extra.pgfault if extra else mem.page_faults, "pgfault", "container")
    s.add(
        "container_memory_failures_total",
        extra.pgmajfault if extra else mem.major_page_faults,
        "pgmajfault",
        "container",
    )
    s.add("container_memory_failures_total", mem.page_faults, "pgfault", "hierarchy")
    s.add("container_memory_failures_total", mem.major_page_faults, "pgmajfault", "hierarchy")
    if detail is None:
        s.add("container_spec_memory_limit_bytes", mem.limit_bytes or 0)
        if stats.swap is not None:
            s.add("container_memory_swap", stats.swap.usage_bytes)
        return
    s.add("container_oom_events_total", detail.oom_kills)
    if extra is not None:
        s.add("container_memory_cache", extra.cache)
        s.add("container_memory_mapped_file", extra.mapped_file)
        s.add("container_memory_kernel_usage", extra.kernel)
        s.add("container_memory_swap", extra.swap)
        s.add("container_memory_failcnt", extra.failcnt)
        s.add("container_memory_max_usage_bytes", extra.max_usage)


def _processes(s: _Samples, stats: CgroupStats, detail: CgroupDetail | None) -> None:
    if stats.process is not None:  # pids.current and pids.max count tasks: threads
        s.add("container_threads", stats.process.process_count)
        s.add("container_threads_max", stats.process.limit or 0)
    if detail is None:
        if stats.process is not None:
            s.add("container_processes", stats.process.process_count)
        return
    s.add("container_processes", detail.tasks.processes)
    s.add("container_file_descriptors", detail.tasks.file_descriptors)
    s.add("container_sockets", detail.tasks.sockets)
    if detail.max_open_files is not None:
        s.add("container_ulimits_soft", detail.max_open_files, "max_open_files")


def _spec(s: _Samples, detail: CgroupDetail) -> None:
    spec = detail.spec
    s.add("container_spec_cpu_period", spec.cpu_period)
    if spec.cpu_quota > 0:
        s.add("container_spec_cpu_quota", spec.cpu_quota)
    s.add("container_spec_cpu_shares", spec.cpu_shares)
    if detail.memory is not None:
        s.add("container_spec_memory_limit_bytes", spec.memory_limit)
        s.add("container_spec_memory_swap_limit_bytes", spec.memory_swap_limit)
        s.add("container_spec_memory_reservation_limit_bytes", spec.memory_reservation)


def _pressure(s: _Samples, stats: CgroupStats) -> None:
    """Stalled is PSI's "full" total, waiting its "some" total."""
    memory_psi = stats.memory.psi if stats.memory is not None else None
    io_psi = stats.io.psi if stats.io is not None else None
    for resource, psi in (("cpu", stats.cpu.psi), ("memory", memory_psi), ("io", io_psi)):
        if psi is None:
            continue
        s.add(f"container_pressure_{resource}_stalled_seconds_total", _full_ns(psi) // NS_PER_S)
        s.add(f"container_pressure_{resource}_waiting_seconds_total", psi.some.total_ns // NS_PER_S)


def _full_ns(psi: PsiStats) -> int:
    return psi.full.total_ns if psi.full is not None else 0


def _blkio(s: _Samples, detail: CgroupDetail) -> None:
    for dev in detail.blkio:
        s.add("container_fs_reads_bytes_total", dev.bytes.get("Read", 0), dev.device)
        s.add("container_fs_reads_total", dev.ios.get("Read", 0), dev.device)
        s.add("container_fs_writes_bytes_total", dev.bytes.get("Write", 0), dev.device)
        s.add("container_fs_writes_total", dev.ios.get("Write", 0), dev.device)
        for operation, value in sorted(dev.bytes.items()):
            s.add("container_blkio_device_usage_total", value, dev.device, str(dev.major), str(dev.minor), operation)


def _filesystem(s: _Samples, fs: Filesystem) -> None:
    s.add("container_fs_usage_bytes", fs.usage_bytes, fs.device)
    s.add("container_fs_limit_bytes", fs.capacity_bytes, fs.device)
    s.add("container_fs_inodes_total", fs.inodes, fs.device)
    s.add("container_fs_inodes_free", fs.inodes_free, fs.device)


def _network(s: _Samples, network: Sequence[NetworkCounters]) -> None:
    for nic in network:
        name = nic.interface
        s.add("container_network_receive_bytes_total", nic.rx_bytes, name)
        s.add("container_network_transmit_bytes_total", nic.tx_bytes, name)
        s.add("container_network_receive_errors_total", nic.rx_errors, name)
        s.add("container_network_transmit_errors_total", nic.tx_errors, name)
        s.add("container_network_receive_packets_total", nic.rx_packets, name)
        s.add("container_network_transmit_packets_total", nic.tx_packets, name)
        s.add("container_network_receive_packets_dropped_total", nic.rx_dropped, name)
        s.add("container_network_transmit_packets_dropped_total", nic.tx_dropped, name)
