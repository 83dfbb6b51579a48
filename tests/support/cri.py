"""CRI calls on a live daemon, shared by tests/ and conformance/.

Both suites drive a real `crishim serve` over its socket and have nothing else to do
while they wait, so every helper here is synchronous and takes the Daemon first. The
calls carry per-call deadlines: generous enough for a cold pull on a slow node, short
enough that a hung daemon fails its test instead of the whole run.

The pod and container configs at the top are the plain shapes our own tests use
(a name, namespace "test", logs under the daemon's dir); critest's shapes, which the
conformance suite must send unchanged, are in tests.support.critest.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
from crishim.cri_api import api_pb2 as pb

from tests.support.daemon import Daemon
from tests.support.images import TestImages

CALL_TIMEOUT = 60.0
PULL_TIMEOUT = 180.0
EXEC_TIMEOUT = 30
STOP_GRACE = 60
# How long a container may take to reach a state (critest's Eventually(..., time.Minute)).
STATE_TIMEOUT = 60.0

T = TypeVar("T")


# ---- our tests' configs ----------------------------------------------------------------------


def pod_config(name: str, daemon: Daemon, *, attempt: int = 0, **kwargs: Any) -> pb.PodSandboxConfig:
    """A pod named `name` (uid "uid-NAME", namespace "test") logging under the daemon's dir."""
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="test", attempt=attempt),
        log_directory=str(daemon.dir / "logs" / name),
        **kwargs,
    )


def kubelet_pod_linux(network: pb.NamespaceMode = pb.POD, **linux: Any) -> pb.LinuxPodSandboxConfig:
    """The pod's Linux config as the kubelet sends it without shareProcessNamespace: a PID
    namespace per container (the proto's default, POD, is one the pod shares), so no pause process."""
    options = pb.NamespaceOption(pid=pb.CONTAINER, network=network)
    return pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(namespace_options=options), **linux)


def container_config(name: str, image: str, cmd: list[str], **kwargs: Any) -> pb.ContainerConfig:
    """A container running `cmd` in `image`, logging to NAME.log in its pod's log directory."""
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        command=cmd,
        log_path=f"{name}.log",
        **kwargs,
    )


def run_pod(daemon: Daemon, name: str, *, handler: str = "", **kwargs: Any) -> tuple[str, pb.PodSandboxConfig]:
    """Runs pod_config(name, **kwargs) on `handler` ("" is the default); returns (pod id, config)."""
    config = pod_config(name, daemon, **kwargs)
    return run_pod_sandbox(daemon, config, handler), config


def start_container(daemon: Daemon, sid: str, pod: pb.PodSandboxConfig, config: pb.ContainerConfig) -> str:
    """Creates and starts a container; returns its id."""
    cid = create_container(daemon, sid, pod, config)
    start(daemon, cid)
    return cid


# ---- pods ------------------------------------------------------------------------------------


def run_pod_sandbox(daemon: Daemon, config: pb.PodSandboxConfig, handler: str = "") -> str:
    request = pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
    return str(daemon.runtime.RunPodSandbox(request, timeout=CALL_TIMEOUT).pod_sandbox_id)


def stop_pod(daemon: Daemon, sid: str) -> None:
    daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=CALL_TIMEOUT)


def remove_pod_sandbox(daemon: Daemon, sid: str) -> None:
    """RemovePodSandbox alone, for the tests that check what it does without a stop first."""
    daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=CALL_TIMEOUT)


def remove_pod(daemon: Daemon, sid: str) -> None:
    """Stops, then removes the pod (both idempotent per api.proto): how every test cleans up."""
    stop_pod(daemon, sid)
    remove_pod_sandbox(daemon, sid)


def pod_status(daemon: Daemon, sid: str, *, verbose: bool = False) -> pb.PodSandboxStatusResponse:
    request = pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=verbose)
    return daemon.runtime.PodSandboxStatus(request, timeout=CALL_TIMEOUT)


def list_pods(daemon: Daemon, filter: pb.PodSandboxFilter | None = None) -> list[pb.PodSandbox]:
    request = pb.ListPodSandboxRequest(filter=filter) if filter is not None else pb.ListPodSandboxRequest()
    return list(daemon.runtime.ListPodSandbox(request, timeout=CALL_TIMEOUT).items)


# ---- images ----------------------------------------------------------------------------------


def image_status(daemon: Daemon, ref: str) -> pb.Image | None:
    """ImageStatus's image, or None when the runtime does not have it (api.proto: nil image, no error)."""
    answer = daemon.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=CALL_TIMEOUT)
    return answer.image if answer.HasField("image") else None


def pull(daemon: Daemon, ref: str, pod_config: pb.PodSandboxConfig | None = None) -> str:
    """PullImage; returns the image reference the runtime reports."""
    request = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    if pod_config is not None:
        request.sandbox_config.CopyFrom(pod_config)
    return str(daemon.images.PullImage(request, timeout=PULL_TIMEOUT).image_ref)


def pull_test_image(daemon: Daemon, test_images: TestImages, name: str = "busybox:latest") -> str:
    """Pulls one of the standard test images into the daemon; returns its reference."""
    ref = test_images.ref(name)
    pull(daemon, ref)
    return ref


def remove_image(daemon: Daemon, ref: str) -> None:
    daemon.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=CALL_TIMEOUT)


def list_images(daemon: Daemon, filter: pb.ImageFilter | None = None) -> list[pb.Image]:
    request = pb.ListImagesRequest(filter=filter) if filter is not None else pb.ListImagesRequest()
    return list(daemon.images.ListImages(request, timeout=CALL_TIMEOUT).images)


# ---- containers ------------------------------------------------------------------------------


def create_container(daemon: Daemon, sid: str, pod: pb.PodSandboxConfig, config: pb.ContainerConfig) -> str:
    """CreateContainer alone (the image must be there); returns the container id."""
    request = pb.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=pod)
    return str(daemon.runtime.CreateContainer(request, timeout=CALL_TIMEOUT).container_id)


def start(daemon: Daemon, cid: str) -> None:
    daemon.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=CALL_TIMEOUT)


def stop(daemon: Daemon, cid: str, timeout: int = STOP_GRACE) -> None:
    """StopContainer with `timeout` seconds of grace before the kill."""
    request = pb.StopContainerRequest(container_id=cid, timeout=timeout)
    daemon.runtime.StopContainer(request, timeout=timeout + CALL_TIMEOUT)


def remove_container(daemon: Daemon, cid: str) -> None:
    daemon.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=CALL_TIMEOUT)


def container_status(daemon: Daemon, cid: str, *, verbose: bool = False) -> pb.ContainerStatus:
    request = pb.ContainerStatusRequest(container_id=cid, verbose=verbose)
    status: pb.ContainerStatus = daemon.runtime.ContainerStatus(request, timeout=CALL_TIMEOUT).status
    return status


def list_containers(daemon: Daemon, filter: pb.ContainerFilter | None = None) -> list[pb.Container]:
    request = pb.ListContainersRequest(filter=filter) if filter is not None else pb.ListContainersRequest()
    return list(daemon.runtime.ListContainers(request, timeout=CALL_TIMEOUT).containers)


# ---- waiting ---------------------------------------------------------------------------------


def eventually(
    probe: Callable[[], T],
    ok: Callable[[T], bool],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Polls `probe` until `ok(value)`; fails with the last value seen (gomega's Eventually)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last value: {value!r}")
        time.sleep(interval)


def wait_state(
    daemon: Daemon, cid: str, state: pb.ContainerState, timeout: float = STATE_TIMEOUT
) -> pb.ContainerStatus:
    """Polls ContainerStatus until the container is in `state` (pb.CONTAINER_RUNNING...)."""
    return eventually(
        lambda: container_status(daemon, cid),
        lambda s: s.state == state,
        timeout=timeout,
        interval=0.05,
        what=f"container {cid} state {pb.ContainerState.Name(state)}",
    )


def wait_running(daemon: Daemon, cid: str, timeout: float = STATE_TIMEOUT) -> pb.ContainerStatus:
    return wait_state(daemon, cid, pb.CONTAINER_RUNNING, timeout)


def wait_exited(daemon: Daemon, cid: str, timeout: float = STATE_TIMEOUT) -> pb.ContainerStatus:
    return wait_state(daemon, cid, pb.CONTAINER_EXITED, timeout)


# ---- exec, errors, logs, http ----------------------------------------------------------------


def exec_sync(daemon: Daemon, cid: str, cmd: Sequence[str], timeout: int = EXEC_TIMEOUT) -> pb.ExecSyncResponse:
    """ExecSync with `timeout` seconds for the command; returns the whole response."""
    request = pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout)
    return daemon.runtime.ExecSync(request, timeout=timeout + CALL_TIMEOUT)


def exec_output(daemon: Daemon, cid: str, cmd: Sequence[str], timeout: int = EXEC_TIMEOUT) -> tuple[int, str]:
    """ExecSync's exit code and its stdout followed by its stderr, as text."""
    answer = exec_sync(daemon, cid, cmd, timeout)
    return answer.exit_code, (answer.stdout + answer.stderr).decode(errors="replace")


def exec_checked(daemon: Daemon, cid: str, cmd: Sequence[str], timeout: int = EXEC_TIMEOUT) -> str:
    """ExecSync that must exit 0; returns its stdout followed by its stderr, as text."""
    code, out = exec_output(daemon, cid, cmd, timeout)
    assert code == 0, f"{list(cmd)} exited {code}: {out}"
    return out


def rpc_code(call: Callable[[], object]) -> grpc.StatusCode:
    """Runs `call`; returns the gRPC status code it failed with, or OK when it succeeded."""
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def code_of(call: Callable[..., object], request: object) -> grpc.StatusCode:
    """The status code of one RPC: `call(request)` with a 30 s deadline."""
    return rpc_code(lambda: call(request, timeout=30))


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    """The error `call` fails with; a call that succeeds fails the test."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded where a refusal was expected")


def assert_refused(call: Callable[[], object], code: grpc.StatusCode, details: str) -> None:
    """`call` fails with exactly `code` and the message `details`.

    Only the call under test goes in `call`: an image pull or a pod run before it
    belongs outside, so their failures fail the test instead of passing for the refusal.
    """
    error = refusal(call)
    got = (error.code(), error.details())
    assert got == (code, details), f"expected {code.name}: {details!r}\n     got {got[0].name}: {got[1]!r}"


def parse_cri_log(text: str) -> list[tuple[str, str, str, str]]:
    """CRI log lines as (timestamp, stream, tag, content); a malformed line fails the test."""
    entries = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        assert len(parts) >= 3, f"malformed CRI log line: {line!r}"
        entries.append((parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else ""))
    return entries


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One plain GET, bypassing any proxy (tests talk to this node only); returns (status, body).

    Errors propagate so a caller polling with `eventually` can retry.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return int(resp.status), bytes(resp.read())
