"""Resources the kernel refuses for a live container are the caller's error, not the node's."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import container_config, container_status, run_pod, start_container
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root


def _update(daemon: Daemon, container_id: str, resources: pb.LinuxContainerResources) -> tuple[grpc.StatusCode, str]:
    request = pb.UpdateContainerResourcesRequest(container_id=container_id, linux=resources)
    try:
        daemon.runtime.UpdateContainerResources(request, timeout=60)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_resource_values_out_of_the_kernels_range_are_refused_before_the_runtime_runs(
    live_daemon: Daemon, busybox: str
) -> None:
    sandbox_id, pod = run_pod(live_daemon, "refused-resources")
    container_id = start_container(live_daemon, sandbox_id, pod, container_config("app", busybox, ["sleep", "1000"]))
    for resources, message in (
        (pb.LinuxContainerResources(cpuset_mems="63"), "linux.resources.cpuset_mems '63' names memory nodes"),
        (pb.LinuxContainerResources(cpu_period=1), "linux.resources.cpu_period 1 is outside"),
        (pb.LinuxContainerResources(memory_swap_limit_in_bytes=1), "needs memory_limit_in_bytes"),
    ):
        code, details = _update(live_daemon, container_id, resources)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert message in details
    assert container_status(live_daemon, container_id).state == pb.CONTAINER_RUNNING


def test_a_memory_limit_below_what_the_container_uses_is_never_internal(live_daemon: Daemon, busybox: str) -> None:
    """cgroup v1 refuses it (EBUSY): INVALID_ARGUMENT naming the kernel's reason. cgroup v2
    takes it and the kernel's OOM killer ends the container, as it would under containerd."""
    sandbox_id, pod = run_pod(live_daemon, "tiny-memory")
    container_id = start_container(live_daemon, sandbox_id, pod, container_config("app", busybox, ["sleep", "1000"]))
    code, details = _update(live_daemon, container_id, pb.LinuxContainerResources(memory_limit_in_bytes=4096))
    memory_v1 = Path("/sys/fs/cgroup/memory").is_dir()
    assert code == grpc.StatusCode.INVALID_ARGUMENT if memory_v1 else code == grpc.StatusCode.OK, f"{code}: {details}"
    if memory_v1:
        assert "the node refused the new resources" in details
        assert "keeps its previous limits" in details
