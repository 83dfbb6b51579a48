"""critest "Multiple Containers": an httpd and a busybox container share one pod."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from crishim.cri_api import api_pb2 as pb

from conformance import cri

pytestmark = pytest.mark.root

HTTPD_IMAGE = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4"
HTTPD_PORT = 80


@dataclass(frozen=True, slots=True)
class MultiPod:
    pod_id: str
    httpd: str
    busybox: str


@pytest.fixture
def multi_pod(daemon, critest_images: dict[str, str]) -> Iterator[MultiPod]:  # type: ignore[no-untyped-def]
    """critest's BeforeEach: a pod with a log dir and port 80, a running httpd and a running busybox."""
    if HTTPD_IMAGE not in critest_images:
        pytest.fail(
            f"{HTTPD_IMAGE} is not among the images scripts/build-test-images pushes: "
            "critest's multi-container specs run it"
        )
    base = tempfile.mkdtemp(prefix="podLogTest")
    try:
        config = cri.pod_config(
            daemon, "PodSandbox-for-multi-container-test-", port_mappings=[pb.PortMapping(container_port=HTTPD_PORT)]
        )
        config.log_directory = os.path.join(base, config.metadata.name)
        os.makedirs(config.log_directory, mode=0o777)
        with cri.pod(daemon, config) as (pod_id, cfg):
            httpd = cri.container_config("httpd", image=HTTPD_IMAGE, command=None)
            httpd.log_path = httpd.metadata.name + ".log"
            httpd_id = cri.create_container(daemon, pod_id, cfg, httpd)
            cri.start_and_wait_running(daemon, httpd_id)
            command = ["sh", "-c", f"echo {cri.DEFAULT_LOG}; sleep 1000"]
            busybox = cri.container_config("busybox", command=command)
            busybox.ClearField("linux")
            busybox.log_path = busybox.metadata.name + ".log"
            busybox_id = cri.create_container(daemon, pod_id, cfg, busybox)
            cri.start_and_wait_running(daemon, busybox_id)
            yield MultiPod(pod_id, httpd_id, busybox_id)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _wait_log(daemon, cid: str, text: str) -> None:  # type: ignore[no-untyped-def]
    """The log file ContainerStatus names holds `text` within a minute (critest polls every 100 ms)."""
    path = Path(cri.container_status(daemon, cid).log_path)
    cri.eventually(lambda: path.exists() and text in path.read_text(), bool, timeout=60, what=f"{text!r} in {path}")


def test_httpd_reachable_on_pod_ip(daemon, multi_pod: MultiPod) -> None:  # type: ignore[no-untyped-def]
    """[k8s.io] Multiple Containers [Conformance] when running multiple containers in a pod
    should support network"""
    cri.check_main_page(daemon, multi_pod.pod_id, 0, HTTPD_PORT)


def test_each_container_logs_to_its_own_file(daemon, multi_pod: MultiPod) -> None:  # type: ignore[no-untyped-def]
    """[k8s.io] Multiple Containers [Conformance] when running multiple containers in a pod
    should support container log"""
    _wait_log(daemon, multi_pod.httpd, "httpd")
    _wait_log(daemon, multi_pod.busybox, cri.DEFAULT_LOG)


def test_exec_in_each_container(daemon, multi_pod: MultiPod) -> None:  # type: ignore[no-untyped-def]
    """[k8s.io] Multiple Containers [Conformance] when running multiple containers in a pod
    should support container exec"""
    assert cri.exec_ok(daemon, multi_pod.httpd, ["echo", "httpd"]) == "httpd\n"
    assert cri.exec_ok(daemon, multi_pod.busybox, ["echo", "busybox"]) == "busybox\n"
