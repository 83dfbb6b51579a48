"""Paths in requests: relative ones and `..` escapes are refused, and nothing is created for them."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import container_config, pod_config, run_pod
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root


def _refusal(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=60)
    return caught.value.code(), caught.value.details() or ""


def test_a_relative_log_directory_is_refused_and_nothing_is_created(live_daemon: Daemon) -> None:
    relative = "relative-pod-logs"
    config = pod_config("rel-logs", live_daemon)
    config.log_directory = relative
    code, details = _refusal(live_daemon.runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=config))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.log_directory 'relative-pod-logs' must be absolute" in details
    # The daemon runs in this process's working directory (tests/support/daemon.py).
    assert not (Path(os.getcwd()) / relative).exists()
    listed = live_daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
    assert not any(p.metadata.name == "rel-logs" for p in listed)


def test_a_log_path_climbing_out_of_the_pod_log_directory_is_refused(live_daemon: Daemon, busybox: str) -> None:
    sandbox_id, pod = run_pod(live_daemon, "climb-logs")
    config = container_config("app", busybox, ["true"])
    config.log_path = "../../escaped.log"
    request = pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config, sandbox_config=pod)
    code, details = _refusal(live_daemon.runtime.CreateContainer, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.log_path '../../escaped.log' climbs out" in details
    assert not (Path(pod.log_directory).parent.parent / "escaped.log").exists()
    containers = live_daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers
    assert not any(c.pod_sandbox_id == sandbox_id for c in containers)


@pytest.mark.parametrize("kind", ["mount", "device"])
def test_a_relative_host_path_is_refused(live_daemon: Daemon, busybox: str, kind: str) -> None:
    sandbox_id, pod = run_pod(live_daemon, f"rel-{kind}")
    config = container_config("app", busybox, ["true"])
    if kind == "mount":
        config.mounts.append(pb.Mount(container_path="/data", host_path="etc"))
    else:
        config.devices.append(pb.Device(container_path="/dev/x", host_path="dev/null", permissions="rw"))
    request = pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config, sandbox_config=pod)
    code, details = _refusal(live_daemon.runtime.CreateContainer, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{kind}s[0].host_path" in details
    assert "must be absolute" in details
