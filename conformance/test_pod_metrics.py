"""critest after v1.36, "PodSandbox runtime should support metrics operations": the cAdvisor set.

The kubelet's /metrics/cadvisor is served from ListMetricDescriptors and
ListPodSandboxMetrics when it takes pod and container stats from the runtime; critest
lists the metric names it serves and checks that a pod with a running container
reports each, with as many label values as its descriptor has label keys. critest
excuses the block I/O metrics (a virtual disk may count nothing) and, for runtimes that
lack them, a few others; crishim has every one, and test_cadvisor_metrics.py checks
their values.
"""

from __future__ import annotations

import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

EXPECTED = critest.EXPECTED_METRIC_DESCRIPTORS
# Values critest does not require: block I/O (no per-device accounting on some disks), huge
# pages (a host without the hugetlb controller) and pressure (a kernel without PSI).
OPTIONAL_VALUES = frozenset(
    {
        "container_blkio_device_usage_total",
        "container_fs_reads_bytes_total",
        "container_fs_reads_total",
        "container_fs_writes_bytes_total",
        "container_fs_writes_total",
        "container_hugetlb_max_usage_bytes",
        "container_hugetlb_usage_bytes",
        *(n for n in EXPECTED if n.startswith("container_pressure_")),
    }
)
DISK_TEST = (
    "mkdir -p /var/lib/mydisktest && for i in $(seq 1 10); do echo hi >> /var/lib/mydisktest/inode_test_file_$i; "
    "done; sync"
)
MIB = 1 << 20


def descriptors(daemon: Daemon) -> list[pb.MetricDescriptor]:
    return list(
        daemon.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=cri.CALL_TIMEOUT).descriptors
    )


def test_metric_descriptors_cover_the_kubelet_cadvisor_set(daemon: Daemon) -> None:
    """[k8s.io] PodSandbox runtime should support metrics operations
    runtime should support returning metrics descriptors [Conformance]"""
    listed = descriptors(daemon)
    assert [d.name for d in listed if not d.help or not d.label_keys] == []
    assert sorted(set(EXPECTED) - {d.name for d in listed}) == []


def metrics_container(prefix: str) -> pb.ContainerConfig:
    """critest's createContainerForMetrics: the default container with CPU and memory limits."""
    resources = pb.LinuxContainerResources(
        cpu_period=100000,
        cpu_quota=20000,
        cpu_shares=1024,
        memory_limit_in_bytes=64 * MIB,
        memory_swap_limit_in_bytes=64 * MIB,
    )
    return critest.container_config(prefix, linux=pb.LinuxContainerConfig(resources=resources))


def first_label_values(pod: pb.PodSandboxMetrics) -> dict[str, list[str]]:
    """{metric name: label values of its first sample}, the pod's own samples before its containers'."""
    found: dict[str, list[str]] = {}
    samples = [*pod.metrics, *(m for c in pod.container_metrics for m in c.metrics)]
    for metric in samples:
        if not found.get(metric.name):
            found[metric.name] = list(metric.label_values)
    return found


def test_pod_metrics_report_every_descriptor_with_its_labels(daemon: Daemon) -> None:
    """[k8s.io] PodSandbox runtime should support metrics operations
    runtime should support listing pod sandbox metrics [Conformance]"""
    with critest.default_pod(daemon) as (pod_id, pod_config):
        cid = critest.create_container(daemon, pod_id, pod_config, metrics_container("container-for-metrics-"))
        cri.start(daemon, cid)
        critest.exec_ok(daemon, cid, ["/bin/sh", "-c", DISK_TEST])
        listed = descriptors(daemon)
        answer = daemon.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=cri.CALL_TIMEOUT)
        pods = [m for m in answer.pod_metrics if m.pod_sandbox_id == pod_id]
        assert len(pods) == 1, [m.pod_sandbox_id for m in answer.pod_metrics]
        found = first_label_values(pods[0])
        assert sorted(n for n in EXPECTED if not found.get(n) and n not in OPTIONAL_VALUES) == []
        mismatched = [
            d.name
            for d in listed
            if (d.name in found and len(found[d.name]) != len(d.label_keys))
            or (d.name not in found and d.name not in OPTIONAL_VALUES)
        ]
        assert mismatched == []
        assert [c.container_id for c in pods[0].container_metrics] == [cid]
