"""The metrics the kubelet's /metrics/cadvisor serves, as CRI MetricDescriptors.

With PodAndContainerStatsFromCRI the kubelet builds /metrics/cadvisor from
ListMetricDescriptors and ListPodSandboxMetrics instead of running cAdvisor, and adds
the namespace, pod and container labels itself. Names, help texts, types and label
keys are cAdvisor's (lib/metrics/prometheus.go), so dashboards and alerts written for
cAdvisor read the same series: every metric carries cAdvisor's base labels id (the
cgroup path), name and image, then the labels of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

MetricType = Literal["counter", "gauge"]

BASE_LABEL_KEYS: tuple[str, ...] = ("id", "name", "image")


@dataclass(frozen=True, slots=True)
class Descriptor:
    name: str
    help: str
    label_keys: tuple[str, ...]
    type: MetricType


# (name, type, extra label keys, help), grouped as cAdvisor groups them.
_TABLE: tuple[tuple[str, MetricType, tuple[str, ...], str], ...] = (
    ("container_last_seen", "gauge", (), "Last time a container was seen by the exporter"),
    ("container_start_time_seconds", "gauge", (), "Start time of the container since unix epoch in seconds."),
    # CPU
    ("container_cpu_user_seconds_total", "counter", (), "Cumulative user cpu time consumed in seconds."),
    ("container_cpu_system_seconds_total", "counter", (), "Cumulative system cpu time consumed in seconds."),
    ("container_cpu_usage_seconds_total", "counter", ("cpu",), "Cumulative cpu time consumed in seconds."),
    ("container_cpu_cfs_periods_total", "counter", (), "Number of elapsed enforcement period intervals."),
    ("container_cpu_cfs_throttled_periods_total", "counter", (), "Number of throttled period intervals."),
    (
        "container_cpu_cfs_throttled_seconds_total",
        "counter",
        (),
        "Total time duration the container has been throttled.",
    ),
    # Memory
    ("container_memory_cache", "gauge", (), "Number of bytes of page cache memory."),
    ("container_memory_rss", "gauge", (), "Size of RSS in bytes."),
    ("container_memory_kernel_usage", "gauge", (), "Size of kernel memory allocated in bytes."),
    ("container_memory_mapped_file", "gauge", (), "Size of memory mapped files in bytes."),
    ("container_memory_swap", "gauge", (), "Container swap usage in bytes."),
    ("container_memory_failcnt", "counter", (), "Number of memory usage hits limits"),
    (
        "container_memory_usage_bytes",
        "gauge",
        (),
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
    ),
    ("container_memory_max_usage_bytes", "gauge", (), "Maximum memory usage recorded in bytes"),
    ("container_memory_working_set_bytes", "gauge", (), "Current working set in bytes."),
    (
        "container_memory_failures_total",
        "counter",
        ("failure_type", "scope"),
        "Cumulative count of memory allocation failures.",
    ),
    ("container_oom_events_total", "counter", (), "Count of out of memory events observed for the container"),
    # Huge pages
    ("container_hugetlb_usage_bytes", "gauge", ("pagesize",), "Current hugepage usage in bytes"),
    ("container_hugetlb_max_usage_bytes", "gauge", ("pagesize",), "Maximum hugepage usage recorded in bytes"),
    # Filesystem of the writable layer
    ("container_fs_inodes_free", "gauge", ("device",), "Number of available Inodes"),
    ("container_fs_inodes_total", "gauge", ("device",), "Number of Inodes"),
    (
        "container_fs_limit_bytes",
        "gauge",
        ("device",),
        "Number of bytes that can be consumed by the container on this filesystem.",
    ),
    (
        "container_fs_usage_bytes",
        "gauge",
        ("device",),
        "Number of bytes that are consumed by the container on this filesystem.",
    ),
    # Block I/O
    ("container_fs_reads_bytes_total", "counter", ("device",), "Cumulative count of bytes read"),
    ("container_fs_reads_total", "counter", ("device",), "Cumulative count of reads completed"),
    ("container_fs_writes_bytes_total", "counter", ("device",), "Cumulative count of bytes written"),
    ("container_fs_writes_total", "counter", ("device",), "Cumulative count of writes completed"),
    (
        "container_blkio_device_usage_total",
        "counter",
        ("device", "major", "minor", "operation"),
        "Blkio Device bytes usage",
    ),
    # Network (the pod's)
    ("container_network_receive_bytes_total", "counter", ("interface",), "Cumulative count of bytes received"),
    ("container_network_receive_packets_total", "counter", ("interface",), "Cumulative count of packets received"),
    (
        "container_network_receive_packets_dropped_total",
        "counter",
        ("interface",),
        "Cumulative count of packets dropped while receiving",
    ),
    (
        "container_network_receive_errors_total",
        "counter",
        ("interface",),
        "Cumulative count of errors encountered while receiving",
    ),
    ("container_network_transmit_bytes_total", "counter", ("interface",), "Cumulative count of bytes transmitted"),
    (
        "container_network_transmit_packets_total",
        "counter",
        ("interface",),
        "Cumulative count of packets transmitted",
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "counter",
        ("interface",),
        "Cumulative count of packets dropped while transmitting",
    ),
    (
        "container_network_transmit_errors_total",
        "counter",
        ("interface",),
        "Cumulative count of errors encountered while transmitting",
    ),
    # Processes
    ("container_processes", "gauge", (), "Number of processes running inside the container."),
    ("container_file_descriptors", "gauge", (), "Number of open file descriptors for the container."),
    ("container_sockets", "gauge", (), "Number of open sockets for the container."),
    (
        "container_threads_max",
        "gauge",
        (),
        "Maximum number of threads allowed inside the container, infinity if value is zero",
    ),
    ("container_threads", "gauge", (), "Number of threads running inside the container"),
    (
        "container_ulimits_soft",
        "gauge",
        ("ulimit",),
        "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice",
    ),
    # Limits set on the cgroup
    ("container_spec_cpu_period", "gauge", (), "CPU period of the container."),
    ("container_spec_cpu_quota", "gauge", (), "CPU quota of the container."),
    ("container_spec_cpu_shares", "gauge", (), "CPU share of the container."),
    ("container_spec_memory_limit_bytes", "gauge", (), "Memory limit for the container."),
    ("container_spec_memory_swap_limit_bytes", "gauge", (), "Memory swap limit for the container."),
    (
        "container_spec_memory_reservation_limit_bytes",
        "gauge",
        (),
        "Memory reservation limit for the container.",
    ),
    # Pressure stall information
    (
        "container_pressure_cpu_stalled_seconds_total",
        "counter",
        (),
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
    ),
    (
        "container_pressure_cpu_waiting_seconds_total",
        "counter",
        (),
        "Total time duration tasks in the container have waited due to CPU congestion.",
    ),
    (
        "container_pressure_memory_stalled_seconds_total",
        "counter",
        (),
        "Total time duration no tasks in the container could make progress due to memory congestion.",
    ),
    (
        "container_pressure_memory_waiting_seconds_total",
        "counter",
        (),
        "Total time duration tasks in the container have waited due to memory congestion.",
    ),
    (
        "container_pressure_io_stalled_seconds_total",
        "counter",
        (),
        "Total time duration no tasks in the container could make progress due to IO congestion.",
    ),
    (
        "container_pressure_io_waiting_seconds_total",
        "counter",
        (),
        "Total time duration tasks in the container have waited due to IO congestion.",
    ),
)

DESCRIPTORS: tuple[Descriptor, ...] = tuple(
    Descriptor(name, help_text, (*BASE_LABEL_KEYS, *extra), kind) for name, kind, extra, help_text in _TABLE
)
DESCRIPTOR_BY_NAME: Mapping[str, Descriptor] = {d.name: d for d in DESCRIPTORS}
