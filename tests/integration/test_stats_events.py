"""Issue 9 through the live daemon: container and pod stats, cAdvisor metrics, events, /metrics."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import node
from tests.support.cri import container_config, pull_test_image, remove_pod, run_pod, start_container, wait_exited
from tests.support.daemon import Daemon, running_daemon
from tests.support.images import TestImages
from tests.support.net import free_port

pytestmark = pytest.mark.root

BURN = ["sh", "-c", "while :; do :; done"]
# A shell variable of 48 MiB: anonymous memory the cgroup charges to the container. The loop
# keeps the shell itself alive (ash would exec a trailing `sleep`, freeing the variable).
ALLOC_BYTES = 48 * 1024 * 1024
ALLOC = [
    "sh",
    "-c",
    f"x=$(head -c {ALLOC_BYTES} /dev/zero | tr '\\0' a); echo ready; while :; do sleep 1000; done",
]


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def daemon(metrics_port: int) -> Iterator[Daemon]:
    with running_daemon(f'\n[metrics]\naddress = "127.0.0.1:{metrics_port}"\n') as d:
        yield d


@pytest.fixture(scope="module")
def image(daemon: Daemon, test_images: TestImages) -> str:
    return pull_test_image(daemon, test_images)


def _cgroup_mounts() -> list[Path]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            out.append(Path(fields[4]))
    return out


def remove_cgroup_tree(top: str) -> None:
    """rmdir the test's cgroup parent in every hierarchy, deepest first (cgroups hold no files to delete)."""
    for mount in _cgroup_mounts():
        root = mount / top.lstrip("/")
        if not root.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


@dataclass
class Pod:
    id: str
    config: pb.PodSandboxConfig
    ip: str
    burn: str = ""
    alloc: str = ""
    containers: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def pod(daemon: Daemon, image: str) -> Iterator[Pod]:
    """A pod under its own cgroup parent, one CPU burner and one container holding 48 MiB."""
    token = secrets.token_hex(4)
    # The daemon's driver decides the parent's form: a slice of its own under systemd.
    top = f"crishimtest{token}.slice" if node.pid1_is_systemd() else f"/crishim-test-{token}"
    parent = top if node.pid1_is_systemd() else f"{top}/pod-stats"
    sid, config = run_pod(daemon, "stats", linux=pb.LinuxPodSandboxConfig(cgroup_parent=parent))
    try:
        status = daemon.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=10).status
        p = Pod(sid, config, status.network.ip)
        p.burn = start_container(daemon, sid, config, container_config("burn", image, BURN, labels={"app": "burn"}))
        p.alloc = start_container(daemon, sid, config, container_config("alloc", image, ALLOC, labels={"app": "mem"}))
        p.containers = [p.burn, p.alloc]
        # Filling 48 MiB through a shell pipe takes seconds here, minutes under software emulation.
        deadline = time.monotonic() + 180
        log = ""
        while "ready" not in log and time.monotonic() < deadline:
            time.sleep(0.1)
            alloc_log = Path(config.log_directory, "alloc.log")
            log = alloc_log.read_text() if alloc_log.exists() else ""
        assert "ready" in log, "the allocating container never filled its memory"
        yield p
    finally:
        try:
            remove_pod(daemon, sid)
        finally:
            if node.pid1_is_systemd():
                node.stop_units(top)
            else:
                remove_cgroup_tree(top)


def container_stats(daemon: Daemon, cid: str) -> pb.ContainerStats:
    return daemon.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid), timeout=10).stats


def test_cpu_burner_shows_rising_usage_and_nano_cores(daemon: Daemon, pod: Pod) -> None:
    first = container_stats(daemon, pod.burn)
    time.sleep(0.5)  # the interval the CPU rate is measured over
    second = container_stats(daemon, pod.burn)
    assert second.attributes.id == pod.burn
    assert second.attributes.labels["app"] == "burn"
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value + 100_000_000
    # A busy loop on a 2-core machine: well above a tenth of a core over the interval.
    assert second.cpu.usage_nano_cores.value > 100_000_000
    assert second.cpu.timestamp > first.cpu.timestamp
    assert second.writable_layer.fs_id.mountpoint


def test_allocating_container_shows_its_memory_in_the_working_set(daemon: Daemon, pod: Pod) -> None:
    stats = container_stats(daemon, pod.alloc)
    assert stats.memory.working_set_bytes.value >= ALLOC_BYTES
    assert stats.memory.usage_bytes.value >= stats.memory.working_set_bytes.value
    assert stats.memory.rss_bytes.value >= ALLOC_BYTES
    burner = container_stats(daemon, pod.burn)
    assert burner.memory.working_set_bytes.value < ALLOC_BYTES


def test_list_container_stats_filters_by_id_sandbox_and_labels(daemon: Daemon, pod: Pod) -> None:
    rt = daemon.runtime

    def ids(f: pb.ContainerStatsFilter | None) -> set[str]:
        request = pb.ListContainerStatsRequest(filter=f) if f is not None else pb.ListContainerStatsRequest()
        return {s.attributes.id for s in rt.ListContainerStats(request, timeout=10).stats}

    assert ids(pb.ContainerStatsFilter(id=pod.burn)) == {pod.burn}
    assert ids(pb.ContainerStatsFilter(id=pod.alloc[:12])) == {pod.alloc}  # a unique prefix is enough
    assert ids(pb.ContainerStatsFilter(pod_sandbox_id=pod.id)) == {pod.burn, pod.alloc}
    assert ids(pb.ContainerStatsFilter(label_selector={"app": "mem"})) == {pod.alloc}
    assert ids(pb.ContainerStatsFilter(pod_sandbox_id=pod.id, label_selector={"app": "none"})) == set()
    assert {pod.burn, pod.alloc} <= ids(None)
    listed = rt.ListContainerStats(
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(id=pod.burn)), timeout=10
    ).stats[0]
    assert listed.cpu.usage_core_nano_seconds.value > 0


def test_stream_container_stats_sends_the_pods_containers(daemon: Daemon, pod: Pod) -> None:
    request = pb.StreamContainerStatsRequest(filter=pb.ContainerStatsFilter(pod_sandbox_id=pod.id))
    got = {
        s.attributes.id: s for r in daemon.runtime.StreamContainerStats(request, timeout=10) for s in r.container_stats
    }
    assert set(got) == {pod.burn, pod.alloc}
    assert got[pod.burn].cpu.usage_core_nano_seconds.value > 0
    assert got[pod.alloc].memory.working_set_bytes.value >= ALLOC_BYTES


def _eth0(stats: pb.PodSandboxStats) -> pb.NetworkInterfaceUsage:
    return stats.linux.network.default_interface


def test_pod_stats_have_cgroup_usage_network_traffic_and_containers(daemon: Daemon, pod: Pod) -> None:
    rt = daemon.runtime
    before = rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod.id), timeout=10).stats
    assert before.attributes.id == pod.id
    assert before.attributes.metadata.name == "stats"
    assert _eth0(before).name == "eth0"
    ping = subprocess.run(
        ["busybox", "ping", "-c", "5", "-i", "0.2", "-s", "1000", "-W", "2", pod.ip],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    after = rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod.id), timeout=10).stats
    # Five 1000-byte pings in, five replies out.
    assert _eth0(after).rx_bytes.value >= _eth0(before).rx_bytes.value + 5 * 1000
    assert _eth0(after).tx_bytes.value >= _eth0(before).tx_bytes.value + 5 * 1000
    linux = after.linux
    # The pod cgroup holds both containers: at least the burner's CPU and the 48 MiB.
    burner = container_stats(daemon, pod.burn)
    assert linux.cpu.usage_core_nano_seconds.value >= burner.cpu.usage_core_nano_seconds.value
    assert linux.memory.working_set_bytes.value >= ALLOC_BYTES
    assert linux.process.process_count.value >= 3  # pause, the burner's shell, the sleeping shell
    assert {c.attributes.id for c in linux.containers} == {pod.burn, pod.alloc}
    listed = rt.ListPodSandboxStats(
        pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(id=pod.id)), timeout=10
    ).stats
    assert [s.attributes.id for s in listed] == [pod.id]
    streamed = [
        s
        for r in rt.StreamPodSandboxStats(
            pb.StreamPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(label_selector={"none": "x"})),
            timeout=10,
        )
        for s in r.pod_sandbox_stats
    ]
    assert streamed == []


def test_metric_descriptors_and_pod_metrics_use_cadvisor_names(daemon: Daemon, pod: Pod) -> None:
    rt = daemon.runtime
    names = {d.name for d in rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=10).descriptors}
    expected = {
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
        "container_network_transmit_bytes_total",
    }
    assert expected <= names
    metrics = {
        m.pod_sandbox_id: m for m in rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=10).pod_metrics
    }
    ours = metrics[pod.id]
    pod_names = {m.name for m in ours.metrics}
    assert {
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_network_receive_bytes_total",
    } <= pod_names
    assert pod_names <= names
    rx = [m for m in ours.metrics if m.name == "container_network_receive_bytes_total"]
    assert any("eth0" in m.label_values and m.value.value > 0 for m in rx)
    by_container = {c.container_id: {m.name: m for m in c.metrics} for c in ours.container_metrics}
    assert set(by_container) == {pod.burn, pod.alloc}
    assert by_container[pod.alloc]["container_memory_working_set_bytes"].value.value >= ALLOC_BYTES
    assert by_container[pod.burn]["container_cpu_usage_seconds_total"].metric_type == pb.COUNTER


class Subscriber:
    """One GetContainerEvents stream read in a thread."""

    def __init__(self, daemon: Daemon) -> None:
        self.call = daemon.runtime.GetContainerEvents(pb.GetEventsRequest())
        self.events: list[pb.ContainerEventResponse] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                with self.changed:
                    self.events.append(event)
                    self.changed.notify_all()
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    def kinds_for(self, cid: str) -> list[int]:
        with self.changed:
            return [e.container_event_type for e in self.events if e.container_id == cid]

    def wait_for(self, cid: str, count: int, timeout: float = 20.0) -> list[int]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len([e for e in self.events if e.container_id == cid]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
        return self.kinds_for(cid)

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=10)


def test_lifecycle_events_arrive_in_order_on_two_subscribers(daemon: Daemon, image: str) -> None:
    rt = daemon.runtime
    subscribers = [Subscriber(daemon), Subscriber(daemon)]
    sid, config = run_pod(daemon, "events")
    try:
        # Handshake: a container created only to learn that both streams are live.
        warmup = rt.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=sid, config=container_config("warmup", image, ["true"]), sandbox_config=config
            ),
            timeout=60,
        ).container_id
        for s in subscribers:
            assert s.wait_for(warmup, 1) == [pb.CONTAINER_CREATED_EVENT]
        cid = start_container(daemon, sid, config, container_config("life", image, ["sh", "-c", "exit 0"]))
        assert wait_exited(daemon, cid).state == pb.CONTAINER_EXITED
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
        expected = [
            pb.CONTAINER_CREATED_EVENT,
            pb.CONTAINER_STARTED_EVENT,
            pb.CONTAINER_STOPPED_EVENT,
            pb.CONTAINER_DELETED_EVENT,
        ]
        for s in subscribers:
            assert s.wait_for(cid, 4) == expected
        event = next(
            e
            for e in subscribers[0].events
            if e.container_id == cid and e.container_event_type == pb.CONTAINER_STARTED_EVENT
        )
        assert event.pod_sandbox_status.id == sid
        assert event.created_at > 0
        assert cid in {c.id for c in event.containers_statuses}
    finally:
        for s in subscribers:
            s.close()
        remove_pod(daemon, sid)


METRIC_LINE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+-]+)$")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if m:
            labels = frozenset(tuple(kv.split("=", 1)) for kv in re.findall(r'[a-z_]+="[^"]*"', m["labels"]))
            out[(m["name"], frozenset((k, v.strip('"')) for k, v in labels))] = float(m["value"])
    return out


def test_metrics_endpoint_counts_this_tests_cri_calls(daemon: Daemon, metrics_port: int, pod: Pod) -> None:
    rt = daemon.runtime
    key_ok = ("crishim_cri_requests_total", frozenset({("method", "Version"), ("code", "OK")}))
    key_nf = ("crishim_cri_requests_total", frozenset({("method", "ContainerStatus"), ("code", "NOT_FOUND")}))
    before = scrape(metrics_port)
    for _ in range(3):
        rt.Version(pb.VersionRequest(), timeout=10)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            rt.ContainerStatus(pb.ContainerStatusRequest(container_id="0" * 64), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    after = scrape(metrics_port)
    assert after[key_ok] - before.get(key_ok, 0) == 3
    assert after[key_nf] - before.get(key_nf, 0) == 2
    histogram = ("crishim_cri_request_duration_seconds_count", frozenset({("method", "Version")}))
    assert after[histogram] - before.get(histogram, 0) == 3
    # The pod fixture's two containers run; gauges are read at scrape time.
    assert after[("crishim_containers", frozenset({("state", "running")}))] >= 2
    assert after[("crishim_sandboxes", frozenset({("state", "ready")}))] >= 1
