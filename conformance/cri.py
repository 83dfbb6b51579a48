"""CRI calls the conformance tests share, shaped like critest's framework helpers.

critest builds its pods and containers in a few fixed ways (a default pod with
attempt 2 and the cgroup parent its driver wants, a busybox container running
`top`, a "pause" container running `sh -c top`, an image pulled when
ImageStatus does not know it). Each test here must send the same requests, so
those shapes live in one place. Everything is synchronous: the tests talk to a
real daemon over its socket and have nothing else to do while they wait.

Typical use::

    with pod(daemon, prefix="pod-for-x-") as (pod_id, pod_cfg):
        cid = create_default_container(daemon, pod_id, pod_cfg, "container-for-x-")
        start(daemon, cid)
        assert exec_sync(daemon, cid, ["echo", "-n", "hi"]).stdout == b"hi"
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar

import grpc
from crishim.cri_api import api_pb2 as pb
from crishim.cri_api import api_pb2_grpc

__all__ = [
    "DEFAULT_ATTEMPT",
    "UID_PREFIX",
    "NAMESPACE_PREFIX",
    "SYSTEMD_CGROUP_PARENT",
    "DEFAULT_IMAGE",
    "WEB_SERVER_IMAGE",
    "DEFAULT_COMMAND",
    "PAUSE_COMMAND",
    "EXEC_SYNC_TIMEOUT",
    "STOP_TIMEOUT",
    "DEFAULT_LOG",
    "STAGING",
    "IMAGE_PULL_POD",
    "CALL_TIMEOUT",
    "PULL_TIMEOUT",
    "HasChannel",
    "pb",
    "rt",
    "img",
    "new_uuid",
    "rpc_code",
    "cgroup_parent",
    "pod_config",
    "container_config",
    "run_pod",
    "stop_pod",
    "remove_pod",
    "cleanup_pod",
    "pod",
    "pod_status",
    "list_pods",
    "normalize_image",
    "image_status",
    "pull",
    "ensure_image",
    "remove_image",
    "list_images",
    "remove_image_if_present",
    "create_container",
    "create_default_container",
    "create_pause_container",
    "start",
    "stop",
    "remove_container",
    "container_status",
    "list_containers",
    "eventually",
    "wait_state",
    "start_and_wait_running",
    "stop_and_wait_exited",
    "exec_sync",
    "exec_ok",
    "parse_cri_log",
    "http_get",
    "check_main_page",
]

# critest's defaults (pkg/framework/util.go, pkg/validate/consts.go).
DEFAULT_ATTEMPT = 2
UID_PREFIX = "cri-test-uid"
NAMESPACE_PREFIX = "cri-test-namespace"
SYSTEMD_CGROUP_PARENT = "/test.slice"
DEFAULT_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
WEB_SERVER_IMAGE = "registry.k8s.io/e2e-test-images/nginx:1.14-2"
DEFAULT_COMMAND = ("top",)
PAUSE_COMMAND = ("sh", "-c", "top")
EXEC_SYNC_TIMEOUT = 30
STOP_TIMEOUT = 60
DEFAULT_LOG = "hello World"
STAGING = "gcr.io/k8s-staging-cri-tools/"
IMAGE_PULL_POD = pb.PodSandboxConfig()  # critest's testImagePodSandbox: default labels only (none on Linux)

# Per-call gRPC deadlines: generous enough for a cold pull, short enough that a
# hung daemon fails the test instead of the whole run.
CALL_TIMEOUT = 60.0
PULL_TIMEOUT = 180.0


class HasChannel(Protocol):
    """What the helpers need from a daemon: a channel to its socket (tests.support.daemon.Daemon)."""

    def channel(self) -> grpc.Channel: ...


_Stubs = tuple[HasChannel, grpc.Channel, api_pb2_grpc.RuntimeServiceStub, api_pb2_grpc.ImageServiceStub]
_STUBS: dict[int, _Stubs] = {}


def _stubs(daemon: HasChannel) -> tuple[api_pb2_grpc.RuntimeServiceStub, api_pb2_grpc.ImageServiceStub]:
    # One channel per daemon: a fresh channel per call would reconnect every time.
    entry = _STUBS.get(id(daemon))
    if entry is None or entry[0] is not daemon:
        channel = daemon.channel()
        runtime, images = api_pb2_grpc.RuntimeServiceStub(channel), api_pb2_grpc.ImageServiceStub(channel)
        entry = (daemon, channel, runtime, images)
        _STUBS[id(daemon)] = entry
    return entry[2], entry[3]


def rt(daemon: HasChannel) -> api_pb2_grpc.RuntimeServiceStub:
    """The RuntimeService stub of `daemon` (cached channel)."""
    return _stubs(daemon)[0]


def img(daemon: HasChannel) -> api_pb2_grpc.ImageServiceStub:
    """The ImageService stub of `daemon` (cached channel)."""
    return _stubs(daemon)[1]


def new_uuid() -> str:
    return str(uuid.uuid4())


def rpc_code(call: Callable[[], object]) -> grpc.StatusCode | None:
    """Runs `call`; returns the gRPC status code it failed with, or None when it succeeded."""
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return None


# ---- configs ---------------------------------------------------------------------------------


def cgroup_parent(daemon: HasChannel) -> str:
    """critest's common.GetCgroupParent: "" for the cgroupfs driver, /test.slice otherwise."""
    try:
        resp = rt(daemon).RuntimeConfig(pb.RuntimeConfigRequest(), timeout=CALL_TIMEOUT)
    except grpc.RpcError:
        return SYSTEMD_CGROUP_PARENT
    if resp.HasField("linux") and resp.linux.cgroup_driver == pb.CGROUPFS:
        return ""
    return SYSTEMD_CGROUP_PARENT


def pod_config(
    daemon: HasChannel,
    prefix: str = "pod-",
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    log_directory: str = "",
    hostname: str = "",
    dns: pb.DNSConfig | None = None,
    port_mappings: Sequence[pb.PortMapping] = (),
    sysctls: Mapping[str, str] | None = None,
    security_context: pb.LinuxSandboxSecurityContext | None = None,
) -> pb.PodSandboxConfig:
    """A pod config as framework.RunDefaultPodSandbox builds it: unique name, uid, namespace; attempt 2."""
    name = prefix + new_uuid()
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=name,
            uid=UID_PREFIX + new_uuid(),
            namespace=NAMESPACE_PREFIX + new_uuid(),
            attempt=DEFAULT_ATTEMPT,
        ),
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        log_directory=log_directory,
        hostname=hostname,
        port_mappings=list(port_mappings),
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent(daemon), sysctls=dict(sysctls or {})),
    )
    if dns is not None:
        config.dns_config.CopyFrom(dns)
    if security_context is not None:
        config.linux.security_context.CopyFrom(security_context)
    return config


def container_config(
    prefix: str,
    *,
    image: str = DEFAULT_IMAGE,
    command: Sequence[str] | None = DEFAULT_COMMAND,
    args: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    mounts: Sequence[pb.Mount] = (),
    log_path: str = "",
    stdin: bool = False,
    stdin_once: bool = False,
    tty: bool = False,
    linux: pb.LinuxContainerConfig | None = None,
    envs: Mapping[str, str] | None = None,
) -> pb.ContainerConfig:
    """A container config as framework.CreateDefaultContainer builds it (name = prefix + uuid, attempt 2).

    `command=None` leaves the image's entrypoint in charge, as critest's attribute test does.
    `linux` defaults to an empty LinuxContainerConfig, which critest always sets.
    """
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=prefix + new_uuid(), attempt=DEFAULT_ATTEMPT),
        image=pb.ImageSpec(image=image),
        command=list(command or ()),
        args=list(args),
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        mounts=list(mounts),
        log_path=log_path,
        stdin=stdin,
        stdin_once=stdin_once,
        tty=tty,
        linux=linux if linux is not None else pb.LinuxContainerConfig(),
        envs=[pb.KeyValue(key=k, value=v) for k, v in (envs or {}).items()],
    )


# ---- pods ------------------------------------------------------------------------------------


def run_pod(
    daemon: HasChannel, config: pb.PodSandboxConfig | None = None, *, prefix: str = "pod-", handler: str = ""
) -> tuple[str, pb.PodSandboxConfig]:
    """RunPodSandbox with `config` (default: critest's default pod); returns (pod id, config)."""
    cfg = config if config is not None else pod_config(daemon, prefix)
    req = pb.RunPodSandboxRequest(config=cfg, runtime_handler=handler)
    resp = rt(daemon).RunPodSandbox(req, timeout=CALL_TIMEOUT)
    return resp.pod_sandbox_id, cfg


def stop_pod(daemon: HasChannel, pod_id: str) -> None:
    rt(daemon).StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=CALL_TIMEOUT)


def remove_pod(daemon: HasChannel, pod_id: str) -> None:
    rt(daemon).RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=CALL_TIMEOUT)


def cleanup_pod(daemon: HasChannel, pod_id: str) -> None:
    """framework.CleanupPodSandbox: stop, then remove (both idempotent per api.proto)."""
    stop_pod(daemon, pod_id)
    remove_pod(daemon, pod_id)


@contextlib.contextmanager
def pod(
    daemon: HasChannel, config: pb.PodSandboxConfig | None = None, *, prefix: str = "pod-", handler: str = ""
) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    """Runs a pod for the block, then stops and removes it even when the block failed."""
    pod_id, cfg = run_pod(daemon, config, prefix=prefix, handler=handler)
    try:
        yield pod_id, cfg
    finally:
        cleanup_pod(daemon, pod_id)


def pod_status(daemon: HasChannel, pod_id: str, *, verbose: bool = False) -> pb.PodSandboxStatusResponse:
    return rt(daemon).PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose), timeout=CALL_TIMEOUT
    )


def list_pods(daemon: HasChannel, filter: pb.PodSandboxFilter | None = None) -> list[pb.PodSandbox]:
    req = pb.ListPodSandboxRequest(filter=filter) if filter is not None else pb.ListPodSandboxRequest()
    return list(rt(daemon).ListPodSandbox(req, timeout=CALL_TIMEOUT).items)


# ---- images ----------------------------------------------------------------------------------


def normalize_image(ref: str) -> str:
    """critest appends ":latest" to a reference holding no ':' before looking it up or pulling."""
    return ref if ":" in ref else ref + ":latest"


def image_status(daemon: HasChannel, ref: str) -> pb.Image | None:
    """ImageStatus's image, or None when the runtime does not have it (api.proto: nil image, no error)."""
    resp = img(daemon).ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=CALL_TIMEOUT)
    return resp.image if resp.HasField("image") else None


def pull(daemon: HasChannel, ref: str, pod_config: pb.PodSandboxConfig | None = None) -> str:
    """PullImage; returns the image reference the runtime reports."""
    req = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    if pod_config is not None:
        req.sandbox_config.CopyFrom(pod_config)
    return img(daemon).PullImage(req, timeout=PULL_TIMEOUT).image_ref  # type: ignore[no-any-return]


def ensure_image(daemon: HasChannel, ref: str, pod_config: pb.PodSandboxConfig | None = None) -> None:
    """Pulls `ref` unless the runtime already has it, as framework.CreateContainer does."""
    if image_status(daemon, normalize_image(ref)) is None:
        pull(daemon, normalize_image(ref), pod_config)


def remove_image(daemon: HasChannel, ref: str) -> None:
    img(daemon).RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)), timeout=CALL_TIMEOUT)


def remove_image_if_present(daemon: HasChannel, ref: str) -> None:
    """critest's removeImage: look the reference up, and remove the image by ID if there is one."""
    found = image_status(daemon, ref)
    if found is not None:
        remove_image(daemon, found.id)


def list_images(daemon: HasChannel, filter: pb.ImageFilter | None = None) -> list[pb.Image]:
    req = pb.ListImagesRequest(filter=filter) if filter is not None else pb.ListImagesRequest()
    return list(img(daemon).ListImages(req, timeout=CALL_TIMEOUT).images)


# ---- containers ------------------------------------------------------------------------------


def create_container(
    daemon: HasChannel, pod_id: str, pod_config: pb.PodSandboxConfig, config: pb.ContainerConfig
) -> str:
    """framework.CreateContainer: pull the image when absent, set user_specified_image, create."""
    ref = normalize_image(config.image.image)
    if image_status(daemon, ref) is None:
        pull(daemon, ref, pod_config)
    if not config.image.user_specified_image:
        config.image.user_specified_image = ref
    resp = rt(daemon).CreateContainer(
        pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config), timeout=CALL_TIMEOUT
    )
    return resp.container_id  # type: ignore[no-any-return]


def create_default_container(
    daemon: HasChannel,
    pod_id: str,
    pod_config: pb.PodSandboxConfig,
    prefix: str,
    labels: Mapping[str, str] | None = None,
) -> str:
    """framework.CreateDefaultContainer(WithLabels): busybox running `top`."""
    return create_container(daemon, pod_id, pod_config, container_config(prefix, labels=labels))


def create_pause_container(daemon: HasChannel, pod_id: str, pod_config: pb.PodSandboxConfig, prefix: str) -> str:
    """framework.CreatePauseContainer: busybox running `sh -c top`."""
    return create_container(daemon, pod_id, pod_config, container_config(prefix, command=PAUSE_COMMAND))


def start(daemon: HasChannel, container_id: str) -> None:
    rt(daemon).StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=CALL_TIMEOUT)


def stop(daemon: HasChannel, container_id: str, timeout: int = STOP_TIMEOUT) -> None:
    rt(daemon).StopContainer(
        pb.StopContainerRequest(container_id=container_id, timeout=timeout), timeout=timeout + CALL_TIMEOUT
    )


def remove_container(daemon: HasChannel, container_id: str) -> None:
    rt(daemon).RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=CALL_TIMEOUT)


def container_status(daemon: HasChannel, container_id: str, *, verbose: bool = False) -> pb.ContainerStatus:
    resp = rt(daemon).ContainerStatus(
        pb.ContainerStatusRequest(container_id=container_id, verbose=verbose), timeout=CALL_TIMEOUT
    )
    return resp.status


def list_containers(daemon: HasChannel, filter: pb.ContainerFilter | None = None) -> list[pb.Container]:
    req = pb.ListContainersRequest(filter=filter) if filter is not None else pb.ListContainersRequest()
    return list(rt(daemon).ListContainers(req, timeout=CALL_TIMEOUT).containers)


T = TypeVar("T")


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


def wait_state(daemon: HasChannel, container_id: str, state: int, timeout: float = 60.0) -> pb.ContainerStatus:
    """Polls ContainerStatus until the container is in `state` (pb.CONTAINER_RUNNING...)."""
    return eventually(
        lambda: container_status(daemon, container_id),
        lambda s: s.state == state,
        timeout=timeout,
        what=f"container {container_id} state {pb.ContainerState.Name(state)}",
    )


def start_and_wait_running(daemon: HasChannel, container_id: str) -> None:
    """critest's testStartContainer: start, then the status must become RUNNING."""
    start(daemon, container_id)
    wait_state(daemon, container_id, pb.CONTAINER_RUNNING)


def stop_and_wait_exited(daemon: HasChannel, container_id: str) -> None:
    """critest's testStopContainer: stop (60 s grace), then the status must become EXITED."""
    stop(daemon, container_id)
    wait_state(daemon, container_id, pb.CONTAINER_EXITED)


def exec_sync(
    daemon: HasChannel, container_id: str, cmd: Sequence[str], timeout: int = EXEC_SYNC_TIMEOUT
) -> pb.ExecSyncResponse:
    """ExecSync with critest's 30 s default timeout; returns the whole response."""
    return rt(daemon).ExecSync(
        pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout), timeout=timeout + CALL_TIMEOUT
    )


def exec_ok(daemon: HasChannel, container_id: str, cmd: Sequence[str]) -> str:
    """critest's execSyncContainer: exit 0 and empty stderr required; returns stdout."""
    resp = exec_sync(daemon, container_id, cmd)
    assert resp.exit_code == 0, f"{cmd} exited {resp.exit_code}: {resp.stderr!r}"
    assert resp.stderr == b"", f"{cmd} wrote to stderr: {resp.stderr!r}"
    return resp.stdout.decode()  # type: ignore[no-any-return]


def parse_cri_log(text: str) -> list[tuple[str, str, str, str]]:
    """CRI log lines as (timestamp, stream, tag, content); a malformed line fails the test."""
    entries = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        assert len(parts) >= 3, f"malformed CRI log line: {line!r}"
        entries.append((parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else ""))
    return entries


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One plain GET; returns (status, body). Errors propagate so `eventually` can retry."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - test-local http URL
        return resp.status, resp.read()


def check_main_page(
    daemon: HasChannel, pod_id: str, host_port: int, container_port: int, timeout: float = 60.0
) -> bytes:
    """critest's checkMainPage: GET 127.0.0.1:host_port, or the pod IP:container_port, until 200."""
    if host_port:
        url = f"http://127.0.0.1:{host_port}/"
    else:
        status = pod_status(daemon, pod_id).status
        assert status.network.ip, f"pod {pod_id} status reports no IP: {status.network}"
        url = f"http://{status.network.ip}:{container_port}/"
    last: list[object] = []

    def probe() -> int:
        try:
            code, body = http_get(url)
        except urllib.error.HTTPError as exc:
            last[:] = [exc]
            return exc.code
        except (OSError, urllib.error.URLError) as exc:
            last[:] = [exc]
            return 0
        last[:] = [body]
        return code

    eventually(probe, lambda code: code == 200, timeout=timeout, interval=0.5, what=f"HTTP 200 from {url}")
    return last[0] if isinstance(last[0], bytes) else b""
