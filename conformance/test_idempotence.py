"""critest "Idempotence": stop and remove calls succeed on absent or already stopped objects (api.proto)."""

from __future__ import annotations

import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root


def test_stop_absent_pod_succeeds(daemon: Daemon) -> None:
    """[k8s.io] Idempotence StopPodSandbox should not return an error if not found"""
    cri.stop_pod(daemon, critest.new_uuid())


def test_stop_stopped_pod_succeeds(daemon: Daemon) -> None:
    """[k8s.io] Idempotence StopPodSandbox should not return an error if already stopped"""
    pod_id, _ = critest.run_pod(daemon, prefix="idempotence-pod-")
    try:
        for _ in range(2):
            cri.stop_pod(daemon, pod_id)
            assert cri.pod_status(daemon, pod_id).status.state == pb.SANDBOX_NOTREADY
    finally:
        cri.remove_pod(daemon, pod_id)


def test_remove_absent_pod_succeeds(daemon: Daemon) -> None:
    """[k8s.io] Idempotence RemovePodSandbox should not return an error if not found"""
    cri.remove_pod_sandbox(daemon, critest.new_uuid())


def test_stop_absent_container_succeeds(daemon: Daemon) -> None:
    """[k8s.io] Idempotence StopContainer should not return an error if not found"""
    cri.stop(daemon, critest.new_uuid(), timeout=0)


def test_remove_stopped_container_twice_succeeds(daemon: Daemon) -> None:
    """[k8s.io] Idempotence StopContainer should not return an error if already stopped"""
    # critest's spec of this name stops once, then removes the container twice.
    with critest.default_pod(daemon) as (pod_id, cfg):
        cid = critest.create_pause_container(daemon, pod_id, cfg, "idempotence-container-")
        cri.start(daemon, cid)
        critest.stop_and_wait_exited(daemon, cid)
        cri.remove_container(daemon, cid)
        cri.remove_container(daemon, cid)


def test_remove_absent_container_succeeds(daemon: Daemon) -> None:
    """[k8s.io] Idempotence RemoveContainer should not return an error if not found"""
    cri.remove_container(daemon, critest.new_uuid())


def test_remove_absent_image_twice_succeeds(daemon: Daemon) -> None:
    """[k8s.io] Idempotence RemoveImage should not return an error if not found"""
    fake_id = "0" * 64
    cri.remove_image(daemon, fake_id)
    cri.remove_image(daemon, fake_id)
