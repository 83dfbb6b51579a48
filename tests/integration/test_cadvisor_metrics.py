"""ListPodSandboxMetrics against a live daemon: the values of the cAdvisor set, on this host's cgroups.

A pod runs a container with critest's CPU and memory limits that serves HTTP (a socket,
a second process) and wrote 4 MiB to its writable layer, and a container whose child
the OOM killer killed. The values come from the cgroup files, /proc and the writable
layer; on a v1 host from each controller's hierarchy, on a v2 node from the one tree.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from crishim.cgroups.detect import CgroupVersion
from crishim.cgroups.stats import host_layout
from crishim.cri_api import api_pb2 as pb

from tests.support import cri
from tests.support.daemon import Daemon, running_daemon
from tests.support.images import TestImages

pytestmark = pytest.mark.root

MIB = 1 << 20
# /tmp/written once all 4 MiB are in: /tmp/f exists from dd's first block on.
SERVE = [
    "sh", "-c",
    "httpd -p 8080 -h /tmp && dd if=/dev/zero of=/tmp/f bs=1M count=4 && sync && touch /tmp/written && sleep 3600",
]  # fmt: skip
# tail buffers an endless line: the OOM killer takes it, and the shell goes on to sleep.
OOM = ["sh", "-c", "tail /dev/zero; sleep 3600"]


@dataclass(frozen=True)
class Pod:
    id: str
    ip: str
    image: str
    serve: str
    oom: str
    created: float


def limited(name: str, image: str, cmd: list[str], memory: int, quota: int = 0) -> pb.ContainerConfig:
    """`memory` without swap; with a `quota`, critest's CPU limits (20 ms a 100 ms period, 1024 shares)."""
    resources = pb.LinuxContainerResources(memory_limit_in_bytes=memory, memory_swap_limit_in_bytes=memory)
    if quota:
        resources.cpu_period, resources.cpu_quota, resources.cpu_shares = 100000, quota, 1024
    return cri.container_config(name, image, cmd, linux=pb.LinuxContainerConfig(resources=resources))


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon() as d:
        yield d


@pytest.fixture(scope="module")
def pod(daemon: Daemon, test_images: TestImages) -> Iterator[Pod]:
    image = cri.pull_test_image(daemon, test_images)
    created = time.time()
    sid, config = cri.run_pod(daemon, "cadvisor")
    try:
        serve = cri.start_container(daemon, sid, config, limited("serve", image, SERVE, 64 * MIB, quota=20000))
        oom = cri.start_container(daemon, sid, config, limited("oom", image, OOM, 32 * MIB))
        cri.eventually(
            lambda: cri.exec_sync(daemon, serve, ["ls", "/tmp/written"]).exit_code,
            lambda code: code == 0,
            timeout=120,
            what="the 4 MiB file written whole to the writable layer",
        )
        ip = cri.pod_status(daemon, sid).status.network.ip
        yield Pod(sid, ip, image, serve, oom, created)
    finally:
        cri.remove_pod(daemon, sid)


def pod_metrics(daemon: Daemon, pod_id: str) -> pb.PodSandboxMetrics:
    answer = daemon.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=cri.CALL_TIMEOUT)
    [ours] = [m for m in answer.pod_metrics if m.pod_sandbox_id == pod_id]
    return ours


def values(metrics: list[pb.Metric]) -> dict[tuple[str, tuple[str, ...]], int]:
    """{(name, label values after id, name, image): value}."""
    return {(m.name, tuple(m.label_values[3:])): m.value.value for m in metrics}


def container_metrics(pod: pb.PodSandboxMetrics, cid: str) -> list[pb.Metric]:
    [found] = [c for c in pod.container_metrics if c.container_id == cid]
    return list(found.metrics)


def test_every_sample_has_its_descriptors_labels_and_type(daemon: Daemon, pod: Pod) -> None:
    described = daemon.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=10).descriptors
    keys = {d.name: len(d.label_keys) for d in described}
    ours = pod_metrics(daemon, pod.id)
    samples = [*ours.metrics, *(m for c in ours.container_metrics for m in c.metrics)]
    assert [m.name for m in samples if len(m.label_values) != keys[m.name]] == []
    counters = {m.name for m in samples if m.metric_type == pb.COUNTER}
    assert {"container_cpu_usage_seconds_total", "container_memory_failcnt", "container_oom_events_total"} <= counters
    assert "container_memory_usage_bytes" not in counters
    assert {c.container_id for c in ours.container_metrics} == {pod.serve, pod.oom}


def test_container_limits_usage_and_processes(daemon: Daemon, pod: Pod) -> None:
    samples = container_metrics(pod_metrics(daemon, pod.id), pod.serve)
    assert {tuple(m.label_values[1:3]) for m in samples} == {("serve", pod.image)}
    assert all(pod.serve in m.label_values[0] for m in samples)  # the cgroup path names the container
    v = values(samples)
    assert (v["container_spec_cpu_period", ()], v["container_spec_cpu_quota", ()]) == (100000, 20000)
    if host_layout().version is CgroupVersion.V2:
        assert v["container_spec_cpu_shares", ()] > 0  # cpu.weight converted back; the runtimes round differently
    else:
        assert v["container_spec_cpu_shares", ()] == 1024
    assert v["container_spec_memory_limit_bytes", ()] == 64 * MIB
    assert ("container_cpu_cfs_periods_total", ()) in v
    assert v["container_memory_usage_bytes", ()] >= v["container_memory_working_set_bytes", ()] > 0
    assert v["container_processes", ()] >= 2  # the shell's sleep and httpd
    assert v["container_threads", ()] >= v["container_processes", ()]
    assert v["container_file_descriptors", ()] >= 3
    assert v["container_sockets", ()] >= 1  # httpd's listening socket
    assert v["container_ulimits_soft", ("max_open_files",)] > 0
    [device] = {labels[0] for name, labels in v if name == "container_fs_usage_bytes"}
    assert v["container_fs_usage_bytes", (device,)] >= 4 * MIB
    assert v["container_fs_limit_bytes", (device,)] > v["container_fs_usage_bytes", (device,)]
    assert v["container_fs_inodes_total", (device,)] > v["container_fs_inodes_free", (device,)]
    now = time.time()
    assert pod.created - 1 <= v["container_start_time_seconds", ()] <= now
    assert now - 60 <= v["container_last_seen", ()] <= now + 1


def test_oom_kill_of_a_child_is_counted(daemon: Daemon, pod: Pod) -> None:
    oom_events = cri.eventually(
        lambda: values(container_metrics(pod_metrics(daemon, pod.id), pod.oom)).get(
            ("container_oom_events_total", ()), 0
        ),
        lambda count: count > 0,
        timeout=120,
        interval=0.5,
        what="an OOM kill counted in container_oom_events_total",
    )
    assert oom_events >= 1
    assert cri.container_status(daemon, pod.oom).state == pb.CONTAINER_RUNNING
    v = values(container_metrics(pod_metrics(daemon, pod.id), pod.oom))
    assert v["container_spec_memory_limit_bytes", ()] == 32 * MIB
    assert ("container_memory_failcnt", ()) in v  # 6.x v1 kernels leave it at 0 even across an OOM kill


def test_pod_reports_its_network_and_cgroup(daemon: Daemon, pod: Pod) -> None:
    try:
        cri.http_get(f"http://{pod.ip}:8080/")
    except urllib.error.HTTPError:
        pass  # any answer carried packets both ways
    v = values(pod_metrics(daemon, pod.id).metrics)
    assert v["container_network_receive_packets_total", ("eth0",)] > 0
    assert v["container_network_transmit_packets_total", ("eth0",)] > 0
    assert v["container_network_receive_bytes_total", ("eth0",)] > 0
    assert ("container_network_receive_packets_dropped_total", ("eth0",)) in v
    assert ("container_network_receive_bytes_total", ("lo",)) not in v
    assert {("container_processes", ()), ("container_memory_cache", ()), ("container_spec_cpu_shares", ())} <= set(v)
    assert not [labels for name, labels in v if name == "container_fs_usage_bytes"]  # no writable layer of its own
    assert pod.created - 1 <= v["container_start_time_seconds", ()] <= time.time()
