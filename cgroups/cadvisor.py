"""cAdvisor-named metrics for CRI ListMetricDescriptors / ListPodSandboxMetrics.

With the kubelet's PodAndContainerStatsFromCRI feature the kubelet serves
/metrics/cadvisor from these instead of running cAdvisor, so names, types and
label keys follow cAdvisor's. CRI Metric values are uint64, and the kubelet
exposes them unchanged, so seconds-named metrics carry whole seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .records import CgroupStats

MetricType = Literal["counter", "gauge"]

# id: cgroup path, name: container name, image: image reference (cAdvisor's keys).
BASE_LABEL_KEYS: tuple[str, ...] = ("id", "name", "image")
NETWORK_LABEL_KEYS: tuple[str, ...] = (*BASE_LABEL_KEYS, "interface")


@dataclass(frozen=True, slots=True)
class Descriptor:
    name: str
    help: str
    label_keys: tuple[str, ...]
    type: MetricType


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


_D = Descriptor
DESCRIPTORS: tuple[Descriptor, ...] = (
    _D(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        BASE_LABEL_KEYS,
        "counter",
    ),
    _D(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        BASE_LABEL_KEYS,
        "gauge",
    ),
    _D("container_memory_working_set_bytes", "Current working set in bytes.", BASE_LABEL_KEYS, "gauge"),
    _D("container_memory_rss", "Size of RSS in bytes.", BASE_LABEL_KEYS, "gauge"),
    _D("container_memory_swap", "Container swap usage in bytes.", BASE_LABEL_KEYS, "gauge"),
    _D(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        (*BASE_LABEL_KEYS, "failure_type", "scope"),
        "counter",
    ),
    _D("container_spec_memory_limit_bytes", "Memory limit for the container.", BASE_LABEL_KEYS, "gauge"),
    _D("container_processes", "Number of processes running inside the container.", BASE_LABEL_KEYS, "gauge"),
    _D(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        NETWORK_LABEL_KEYS,
        "counter",
    ),
    _D(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        NETWORK_LABEL_KEYS,
        "counter",
    ),
    _D(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        NETWORK_LABEL_KEYS,
        "counter",
    ),
    _D(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        NETWORK_LABEL_KEYS,
        "counter",
    ),
    _D(
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        NETWORK_LABEL_KEYS,
        "counter",
    ),
    _D(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        NETWORK_LABEL_KEYS,
        "counter",
    ),
    _D(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        NETWORK_LABEL_KEYS,
        "counter",
    ),
    _D(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        NETWORK_LABEL_KEYS,
        "counter",
    ),
)
DESCRIPTOR_BY_NAME: Mapping[str, Descriptor] = {d.name: d for d in DESCRIPTORS}


def list_descriptors() -> tuple[Descriptor, ...]:
    """What ListMetricDescriptors returns: (name, help, label_keys) of every metric we emit."""
    return DESCRIPTORS


def _m(name: str, labels: tuple[str, ...], value: int, ts: int) -> MetricValue:
    return MetricValue(name, DESCRIPTOR_BY_NAME[name].type, labels, max(0, int(value)), ts)


def cgroup_metrics(
    stats: CgroupStats,
    cgroup_id: str,
    name: str,
    image: str,
    network: Sequence[NetworkCounters] = (),
) -> list[MetricValue]:
    """Turn one cgroup's stats (+ interface counters for a pod) into cAdvisor samples.

    cgroup_id is the cgroup path ("/kubepods/burstable/podUID/CID"), name the
    container name (or "" for the pod), image its image reference.
    """
    base = (cgroup_id, name, image)
    out = [
        _m(
            "container_cpu_usage_seconds_total",
            base,
            stats.cpu.usage_core_ns // 1_000_000_000,
            stats.cpu.timestamp_ns,
        )
    ]
    mem = stats.memory
    if mem is not None:
        ts = mem.timestamp_ns
        out += [
            _m("container_memory_usage_bytes", base, mem.usage_bytes, ts),
            _m("container_memory_working_set_bytes", base, mem.working_set_bytes, ts),
            _m("container_memory_rss", base, mem.rss_bytes, ts),
            _m("container_spec_memory_limit_bytes", base, mem.limit_bytes or 0, ts),
            _m("container_memory_failures_total", (*base, "pgfault", "container"), mem.page_faults, ts),
            _m(
                "container_memory_failures_total",
                (*base, "pgmajfault", "container"),
                mem.major_page_faults,
                ts,
            ),
        ]
    if stats.swap is not None:
        out.append(_m("container_memory_swap", base, stats.swap.usage_bytes, stats.swap.timestamp_ns))
    if stats.process is not None:
        out.append(_m("container_processes", base, stats.process.process_count, stats.process.timestamp_ns))
    ts = stats.timestamp_ns
    for nic in network:
        labels = (*base, nic.interface)
        out += [
            _m("container_network_receive_bytes_total", labels, nic.rx_bytes, ts),
            _m("container_network_transmit_bytes_total", labels, nic.tx_bytes, ts),
            _m("container_network_receive_errors_total", labels, nic.rx_errors, ts),
            _m("container_network_transmit_errors_total", labels, nic.tx_errors, ts),
            _m("container_network_receive_packets_total", labels, nic.rx_packets, ts),
            _m("container_network_transmit_packets_total", labels, nic.tx_packets, ts),
            _m("container_network_receive_packets_dropped_total", labels, nic.rx_dropped, ts),
            _m("container_network_transmit_packets_dropped_total", labels, nic.tx_dropped, ts),
        ]
    return out
