"""critest's framework shapes, which the conformance suite must send unchanged.

critest builds its pods and containers in a few fixed ways (a default pod with
attempt 2 and the cgroup parent its driver wants, a busybox container running
`top`, a "pause" container running `sh -c top`, an image pulled when ImageStatus
does not know it, a pod whose log directory is a fresh temp dir). Each conformance
test sends the same requests, so those shapes live here, on top of the plain calls
of tests.support.cri.

The runtime handler defaults to "" (the daemon's default handler), as critest does
without --runtime-handler; set CRITEST_RUNTIME_HANDLER to run the suite against
another one (for example `crun`).

Typical use::

    with critest.pod(daemon, prefix="pod-for-x-") as (pod_id, pod_cfg):
        cid = critest.create_default_container(daemon, pod_id, pod_cfg, "container-for-x-")
        cri.start(daemon, cid)
        assert critest.exec_ok(daemon, cid, ["echo", "-n", "hi"]) == "hi"
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import urllib.error
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from crishim.cri_api import api_pb2 as pb

from tests.support import cri
from tests.support.daemon import Daemon

RUNTIME_HANDLER = os.environ.get("CRITEST_RUNTIME_HANDLER", "")

# critest's defaults (pkg/framework/util.go, pkg/validate/consts.go).
DEFAULT_ATTEMPT = 2
UID_PREFIX = "cri-test-uid"
NAMESPACE_PREFIX = "cri-test-namespace"
SYSTEMD_CGROUP_PARENT = "/test.slice"
DEFAULT_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
WEB_SERVER_IMAGE = "registry.k8s.io/e2e-test-images/nginx:1.14-2"
WEB_SERVER_PORT = 80
DEFAULT_COMMAND = ("top",)
PAUSE_COMMAND = ("sh", "-c", "top")
DEFAULT_LOG = "hello World"
STAGING = "gcr.io/k8s-staging-cri-tools/"
IMAGE_PULL_POD = pb.PodSandboxConfig()  # critest's testImagePodSandbox: default labels only (none on Linux)


def new_uuid() -> str:
    return str(uuid.uuid4())


# ---- configs ---------------------------------------------------------------------------------


def cgroup_parent(daemon: Daemon) -> str:
    """critest's common.GetCgroupParent: "" for the cgroupfs driver, /test.slice otherwise."""
    try:
        answer = daemon.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=cri.CALL_TIMEOUT)
    except grpc.RpcError:
        return SYSTEMD_CGROUP_PARENT
    if answer.HasField("linux") and answer.linux.cgroup_driver == pb.CGROUPFS:
        return ""
    return SYSTEMD_CGROUP_PARENT


def pod_config(
    daemon: Daemon,
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
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=prefix + new_uuid(),
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
    mounts: Sequence[pb.Mount] = (),
    log_path: str = "",
    stdin: bool = False,
    stdin_once: bool = False,
    linux: pb.LinuxContainerConfig | None = None,
) -> pb.ContainerConfig:
    """A container config as framework.CreateDefaultContainer builds it (name = prefix + uuid, attempt 2).

    `command=None` leaves the image's entrypoint in charge, as critest's attribute test does.
    `linux` defaults to an empty LinuxContainerConfig, which critest always sets.
    """
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=prefix + new_uuid(), attempt=DEFAULT_ATTEMPT),
        image=pb.ImageSpec(image=image),
        command=list(command or ()),
        mounts=list(mounts),
        log_path=log_path,
        stdin=stdin,
        stdin_once=stdin_once,
        linux=linux if linux is not None else pb.LinuxContainerConfig(),
    )


# ---- pods ------------------------------------------------------------------------------------


def run_pod(
    daemon: Daemon, config: pb.PodSandboxConfig | None = None, *, prefix: str = "pod-", handler: str = RUNTIME_HANDLER
) -> tuple[str, pb.PodSandboxConfig]:
    """RunPodSandbox with `config` (default: critest's default pod); returns (pod id, config)."""
    cfg = config if config is not None else pod_config(daemon, prefix)
    return cri.run_pod_sandbox(daemon, cfg, handler), cfg


@contextlib.contextmanager
def pod(
    daemon: Daemon, config: pb.PodSandboxConfig | None = None, *, prefix: str = "pod-", handler: str = RUNTIME_HANDLER
) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    """Runs a pod for the block, then stops and removes it (framework.CleanupPodSandbox) even on failure."""
    pod_id, cfg = run_pod(daemon, config, prefix=prefix, handler=handler)
    try:
        yield pod_id, cfg
    finally:
        cri.remove_pod(daemon, pod_id)


def default_pod(daemon: Daemon) -> contextlib.AbstractContextManager[tuple[str, pb.PodSandboxConfig]]:
    """framework.CreatePodSandboxForContainer."""
    return pod(daemon, prefix="create-PodSandbox-for-container-")


def privileged_pod(
    daemon: Daemon, privileged: bool = True
) -> contextlib.AbstractContextManager[tuple[str, pb.PodSandboxConfig]]:
    """createPrivilegedPodSandbox."""
    security = pb.LinuxSandboxSecurityContext(privileged=privileged)
    return pod(daemon, pod_config(daemon, "create-Privileged-PodSandbox-for-container-", security_context=security))


def port_mapping_pod_config(
    daemon: Daemon, mappings: list[pb.PortMapping], *, host_network: bool = False
) -> pb.PodSandboxConfig:
    """createPodSandboxWithPortMapping's config, in the node's network namespace if `host_network`."""
    security = None
    if host_network:
        security = pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(network=pb.NODE))
    return pod_config(daemon, "create-PodSandbox-with-port-mapping", port_mappings=mappings, security_context=security)


# ---- images ----------------------------------------------------------------------------------


def normalize_image(ref: str) -> str:
    """critest appends ":latest" to a reference holding no ':' before looking it up or pulling."""
    return ref if ":" in ref else ref + ":latest"


def remove_image_if_present(daemon: Daemon, ref: str) -> None:
    """critest's removeImage: look the reference up, and remove the image by ID if there is one."""
    found = cri.image_status(daemon, ref)
    if found is not None:
        cri.remove_image(daemon, found.id)


# ---- containers ------------------------------------------------------------------------------


def prepare_image(daemon: Daemon, pod_config: pb.PodSandboxConfig, config: pb.ContainerConfig) -> None:
    """framework.CreateContainer's first half: pull the image when absent, set user_specified_image.

    Tests that expect CreateContainer to be refused call this first and wrap only the create.
    """
    ref = normalize_image(config.image.image)
    if cri.image_status(daemon, ref) is None:
        cri.pull(daemon, ref, pod_config)
    if not config.image.user_specified_image:
        config.image.user_specified_image = ref


def create_container(daemon: Daemon, pod_id: str, pod_config: pb.PodSandboxConfig, config: pb.ContainerConfig) -> str:
    """framework.CreateContainer: pull the image when absent, set user_specified_image, create."""
    prepare_image(daemon, pod_config, config)
    return cri.create_container(daemon, pod_id, pod_config, config)


def create_default_container(
    daemon: Daemon,
    pod_id: str,
    pod_config: pb.PodSandboxConfig,
    prefix: str,
    labels: Mapping[str, str] | None = None,
) -> str:
    """framework.CreateDefaultContainer(WithLabels): busybox running `top`."""
    config = container_config(prefix)
    config.labels.update(labels or {})
    return create_container(daemon, pod_id, pod_config, config)


def create_pause_container(daemon: Daemon, pod_id: str, pod_config: pb.PodSandboxConfig, prefix: str) -> str:
    """framework.CreatePauseContainer: busybox running `sh -c top`."""
    return create_container(daemon, pod_id, pod_config, container_config(prefix, command=PAUSE_COMMAND))


def create_web_server_container(
    daemon: Daemon, pod_id: str, pod_config: pb.PodSandboxConfig, prefix: str, image: str = WEB_SERVER_IMAGE
) -> str:
    """createWebServerContainer: the image's own command, an empty Linux config."""
    return create_container(daemon, pod_id, pod_config, container_config(prefix, image=image, command=None))


@contextlib.contextmanager
def web_server_pod(
    daemon: Daemon, mapping: pb.PortMapping, prefix: str, *, host_network: bool = False, image: str = WEB_SERVER_IMAGE
) -> Iterator[str]:
    """A pod with `mapping` running a web server container, for the block; yields the pod id.

    critest's createPodSandboxWithPortMapping and createWebServerContainer, then start.
    """
    with pod(daemon, port_mapping_pod_config(daemon, [mapping], host_network=host_network)) as (pod_id, cfg):
        cri.start(daemon, create_web_server_container(daemon, pod_id, cfg, prefix, image))
        yield pod_id


def start_and_wait_running(daemon: Daemon, container_id: str) -> None:
    """critest's testStartContainer: start, then the status must become RUNNING."""
    cri.start(daemon, container_id)
    cri.wait_state(daemon, container_id, pb.CONTAINER_RUNNING)


def stop_and_wait_exited(daemon: Daemon, container_id: str) -> None:
    """critest's testStopContainer: stop (60 s grace), then the status must become EXITED."""
    cri.stop(daemon, container_id)
    cri.wait_exited(daemon, container_id)


def exec_ok(daemon: Daemon, container_id: str, cmd: Sequence[str]) -> str:
    """critest's execSyncContainer: exit 0 and empty stderr required; returns stdout."""
    answer = cri.exec_sync(daemon, container_id, cmd)
    assert answer.exit_code == 0, f"{cmd} exited {answer.exit_code}: {answer.stderr!r}"
    assert answer.stderr == b"", f"{cmd} wrote to stderr: {answer.stderr!r}"
    return answer.stdout.decode()


def exec_fails(answer: pb.ExecSyncResponse) -> bool:
    """critest's ExecSync client returns an error when the command exits non-zero."""
    return answer.exit_code != 0


def handler_features(daemon: Daemon, handler: str = RUNTIME_HANDLER) -> pb.RuntimeHandlerFeatures | None:
    """The features Status advertises for `handler` ("" is the default one), or None if not listed."""
    status = daemon.runtime.Status(pb.StatusRequest(), timeout=cri.CALL_TIMEOUT)
    for listed in status.runtime_handlers:
        if listed.name == handler:
            features: pb.RuntimeHandlerFeatures = listed.features
            return features
    return None


def check_main_page(
    daemon: Daemon, pod_id: str, mapping: pb.PortMapping, *, host_network: bool = False, timeout: float = 60.0
) -> None:
    """critest's checkMainPage: GET / until it answers 200.

    On 127.0.0.1 at the host port if `mapping` has one, or at the container port in the
    node's network namespace; on the pod's IP at the container port otherwise.
    """
    if mapping.host_port or host_network:
        url = f"http://127.0.0.1:{mapping.host_port or mapping.container_port}/"
    else:
        status = cri.pod_status(daemon, pod_id).status
        assert status.network.ip, f"pod {pod_id} status reports no IP: {status.network}"
        url = f"http://{status.network.ip}:{mapping.container_port}/"

    def probe() -> int | str:
        try:
            return cri.http_get(url)[0]
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError as exc:
            return str(exc)

    cri.eventually(probe, lambda code: code == 200, timeout=timeout, interval=0.5, what=f"HTTP 200 from {url}")


# ---- container logs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One CRI log line: the stream and the content with its newline, as critest's parseCRILog keeps it."""

    stream: str
    log: str


@contextlib.contextmanager
def log_temp_dir(pod_name: str) -> Iterator[Path]:
    """critest's createLogTempDir: a temp dir with a subdirectory named after the pod; yields that."""
    host_path = Path(tempfile.mkdtemp(prefix="podLogTest"))
    pod_log = host_path / pod_name
    pod_log.mkdir(mode=0o777)
    try:
        yield pod_log
    finally:
        shutil.rmtree(host_path, ignore_errors=True)


@contextlib.contextmanager
def pod_with_log_directory(
    daemon: Daemon,
    prefix: str = "PodSandbox-with-log-directory-",
    *,
    handler: str = RUNTIME_HANDLER,
    security_context: pb.LinuxSandboxSecurityContext | None = None,
    port_mappings: Sequence[pb.PortMapping] = (),
    dns: pb.DNSConfig | None = None,
) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    """critest's createPodSandboxWithLogDirectory: a pod whose log_directory is a fresh temp dir named after it."""
    config = pod_config(daemon, prefix, security_context=security_context, port_mappings=port_mappings, dns=dns)
    with log_temp_dir(config.metadata.name) as log_dir:
        config.log_directory = str(log_dir)
        with pod(daemon, config, handler=handler) as created:
            yield created


def log_entries(pod_config: pb.PodSandboxConfig, log_path: str) -> list[LogEntry]:
    """critest's parseLogLine: every line of the container's CRI log file."""
    text = (Path(pod_config.log_directory) / log_path).read_text(errors="replace")
    return [LogEntry(stream=stream, log=content + "\n") for _, stream, _, content in cri.parse_cri_log(text)]


def assert_log_contains(pod_config: pb.PodSandboxConfig, log_path: str, expected: str, stream: str = "stdout") -> None:
    """critest's verifyLogContents: some log line on `stream` equals `expected` exactly."""
    entries = log_entries(pod_config, log_path)
    assert any(e.log == expected and e.stream == stream for e in entries), (
        f"expected log {expected!r} (stream={stream}) not found in {entries}"
    )


def assert_log_matches(pod_config: pb.PodSandboxConfig, log_path: str, pattern: str, stream: str = "stdout") -> None:
    """critest's verifyLogContentsRe: some log line on `stream` matches the regular expression."""
    entries = log_entries(pod_config, log_path)
    regex = re.compile(pattern)
    assert any(regex.search(e.log) and e.stream == stream for e in entries), (
        f"expected log pattern {pattern!r} (stream={stream}) not found in {entries}"
    )


# cri-tools' expectedMetricDescriptorNames: what the kubelet serves as /metrics/cadvisor.
EXPECTED_METRIC_DESCRIPTORS = (
    "container_blkio_device_usage_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_usage_bytes",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
    "container_hugetlb_max_usage_bytes",
    "container_hugetlb_usage_bytes",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_pressure_cpu_stalled_seconds_total",
    "container_pressure_cpu_waiting_seconds_total",
    "container_pressure_io_stalled_seconds_total",
    "container_pressure_io_waiting_seconds_total",
    "container_pressure_memory_stalled_seconds_total",
    "container_pressure_memory_waiting_seconds_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_quota",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_reservation_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
    "container_ulimits_soft",
)
