"""critest "Multiple Containers": an httpd and a busybox container share one pod."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

HTTPD_IMAGE = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4"
HTTPD_PORT = 80


@dataclass(frozen=True, slots=True)
class MultiPod:
    pod_id: str
    httpd: str
    busybox: str


@pytest.fixture
def multi_pod(daemon: Daemon, critest_images: dict[str, str]) -> Iterator[MultiPod]:
    """critest's BeforeEach: a pod with a log dir and port 80, a running httpd and a running busybox."""
    if HTTPD_IMAGE not in critest_images:
        pytest.fail(
            f"{HTTPD_IMAGE} is not among the images scripts/build-test-images pushes: "
            "critest's multi-container specs run it"
        )
    mapping = pb.PortMapping(container_port=HTTPD_PORT)
    with critest.pod_with_log_directory(daemon, "PodSandbox-for-multi-container-test-", port_mappings=[mapping]) as (
        pod_id,
        cfg,
    ):
        httpd = critest.container_config("httpd", image=HTTPD_IMAGE, command=None)
        httpd.log_path = httpd.metadata.name + ".log"
        httpd_id = critest.create_container(daemon, pod_id, cfg, httpd)
        critest.start_and_wait_running(daemon, httpd_id)
        command = ["sh", "-c", f"echo {critest.DEFAULT_LOG}; sleep 1000"]
        busybox = critest.container_config("busybox", command=command)
        busybox.ClearField("linux")
        busybox.log_path = busybox.metadata.name + ".log"
        busybox_id = critest.create_container(daemon, pod_id, cfg, busybox)
        critest.start_and_wait_running(daemon, busybox_id)
        yield MultiPod(pod_id, httpd_id, busybox_id)


def _wait_log(daemon: Daemon, cid: str, text: str) -> None:
    """The log file ContainerStatus names holds `text` within a minute (critest polls every 100 ms)."""
    path = Path(cri.container_status(daemon, cid).log_path)
    cri.eventually(lambda: path.exists() and text in path.read_text(), bool, timeout=60, what=f"{text!r} in {path}")


def test_httpd_reachable_on_pod_ip(daemon: Daemon, multi_pod: MultiPod) -> None:
    """[k8s.io] Multiple Containers [Conformance] when running multiple containers in a pod
    should support network"""
    critest.check_main_page(daemon, multi_pod.pod_id, pb.PortMapping(container_port=HTTPD_PORT))


def test_each_container_logs_to_its_own_file(daemon: Daemon, multi_pod: MultiPod) -> None:
    """[k8s.io] Multiple Containers [Conformance] when running multiple containers in a pod
    should support container log"""
    _wait_log(daemon, multi_pod.httpd, "httpd")
    _wait_log(daemon, multi_pod.busybox, critest.DEFAULT_LOG)


def test_exec_in_each_container(daemon: Daemon, multi_pod: MultiPod) -> None:
    """[k8s.io] Multiple Containers [Conformance] when running multiple containers in a pod
    should support container exec"""
    assert critest.exec_ok(daemon, multi_pod.httpd, ["echo", "httpd"]) == "httpd\n"
    assert critest.exec_ok(daemon, multi_pod.busybox, ["echo", "busybox"]) == "busybox\n"
