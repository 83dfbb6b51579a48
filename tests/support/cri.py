"""Helpers to drive a live daemon through CRI in tests."""

from __future__ import annotations

import time

import grpc
from crishim.cri_api import api_pb2 as pb

from tests.support.daemon import Daemon


def pod_config(name: str, daemon: Daemon, *, attempt: int = 0, **kwargs) -> pb.PodSandboxConfig:  # type: ignore[no-untyped-def]
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="test", attempt=attempt),
        log_directory=str(daemon.dir / "logs" / name),
        **kwargs,
    )


def container_config(name: str, image: str, cmd: list[str], **kwargs) -> pb.ContainerConfig:  # type: ignore[no-untyped-def]
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        command=cmd,
        log_path=f"{name}.log",
        **kwargs,
    )


def run_pod(daemon: Daemon, name: str, **kwargs) -> tuple[str, pb.PodSandboxConfig]:  # type: ignore[no-untyped-def]
    config = pod_config(name, daemon, **kwargs)
    sid = daemon.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    return sid, config


def start_container(daemon: Daemon, sid: str, pod: pb.PodSandboxConfig, config: pb.ContainerConfig) -> str:
    rt = daemon.runtime
    cid = rt.CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=pod), timeout=60
    ).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
    return cid


def container_status(daemon: Daemon, cid: str) -> pb.ContainerStatus:
    return daemon.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=10).status


def wait_exited(daemon: Daemon, cid: str, timeout: float = 20.0) -> pb.ContainerStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = container_status(daemon, cid)
        if status.state == pb.CONTAINER_EXITED or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def remove_pod(daemon: Daemon, sid: str) -> None:
    daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)


def code_of(call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
