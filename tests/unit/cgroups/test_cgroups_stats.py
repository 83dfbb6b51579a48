from __future__ import annotations

from crishim.cgroups.cadvisor import NetworkCounters, cgroup_metrics, list_descriptors
from crishim.cgroups.files import parse_psi
from crishim.cgroups.records import CgroupStats, CpuStats, MemoryStats, ProcessStats


def test_psi_without_full_line_has_full_none() -> None:
    psi = parse_psi("some avg10=0.10 avg60=0.20 avg300=0.30 total=5\n")
    assert psi is not None
    assert psi.some.total_ns == 5000
    assert psi.full is None
    assert parse_psi("") is None


def _stats() -> CgroupStats:
    ts = 123
    return CgroupStats(
        timestamp_ns=ts,
        cpu=CpuStats(ts, 3_500_000_000, None, None),
        memory=MemoryStats(ts, 100, 80, 60, 10, 2, 1000, 920, None),
        swap=None,
        process=ProcessStats(ts, 4, None),
        io=None,
    )


def test_cadvisor_metrics_use_descriptor_names_types_and_labels() -> None:
    names = {d.name: d for d in list_descriptors()}
    for required in (
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_memory_usage_bytes",
        "container_memory_rss",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
        "container_network_receive_errors_total",
        "container_network_transmit_errors_total",
        "container_spec_memory_limit_bytes",
        "container_processes",
    ):
        assert required in names
    nic = NetworkCounters("eth0", rx_bytes=10, tx_bytes=20, rx_errors=1, tx_errors=2)
    metrics = cgroup_metrics(_stats(), "/kubepods/pod1", "", "", [nic])
    by = {(m.name, m.label_values[-1] if "network" in m.name else ""): m for m in metrics}
    cpu = by[("container_cpu_usage_seconds_total", "")]
    assert (cpu.type, cpu.value, cpu.label_values) == ("counter", 3, ("/kubepods/pod1", "", "", "total"))
    assert by[("container_memory_working_set_bytes", "")].value == 80
    assert by[("container_memory_working_set_bytes", "")].type == "gauge"
    assert by[("container_spec_memory_limit_bytes", "")].value == 1000
    assert by[("container_processes", "")].value == 4
    rx = by[("container_network_receive_bytes_total", "eth0")]
    assert rx.value == 10
    assert rx.type == "counter"
    assert by[("container_network_transmit_errors_total", "eth0")].value == 2
    for m in metrics:
        assert len(m.label_values) == len(names[m.name].label_keys)
