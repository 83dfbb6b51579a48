"""critest "Security Context UserNamespaces": pod user namespaces and the mappings a runtime must refuse.

critest runs these only when Status lists its runtime handler ("" unless
--runtime-handler is given; CRITEST_RUNTIME_HANDLER here) with user_namespaces;
the NamespaceMode_POD spec also needs the host to idmap-mount the filesystem under
the runtime's state dir, which it probes with open_tree + mount_setattr.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.oci.mounttable import unmount
from crishim.runtime.idmap import idmapped_bind

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

POD = pb.POD
NODE = pb.NODE
CONTAINER = pb.CONTAINER
TARGET = pb.TARGET
DEFAULT_MAPPING = [pb.IDMapping(container_id=0, host_id=1000, length=100000)]
PROBE_HOST_ID = 65536
PROBE_SIZE = 65536


@pytest.fixture
def userns_handler(daemon: Daemon) -> str:
    """critest's BeforeEach: skip unless the handler advertises user namespaces.

    critest runs against one handler (its --runtime-handler); here, when the default
    handler (runc 1.1.5) lacks user namespaces, the specs run on crun, as
    `critest --runtime-handler=crun` would, rather than skipping.
    """
    candidates = [critest.RUNTIME_HANDLER] if critest.RUNTIME_HANDLER else ["", "crun"]
    for handler in candidates:
        features = critest.handler_features(daemon, handler)
        if features is not None and features.user_namespaces:
            return handler
    pytest.skip(f"no runtime handler found which supports user namespaces (tried {candidates!r})")


# ---- critest's supportsIDMap ----------------------------------------------------------------------


@contextlib.contextmanager
def _mapped_userns() -> Iterator[int]:
    """A short-lived process in a new user namespace mapping 0 -> 65536 (65536 ids); yields its pid."""
    child = subprocess.Popen(["unshare", "--user", "sleep", "5"])
    try:
        own = os.stat("/proc/self/ns/user").st_ino
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{child.pid}/ns/user").st_ino == own:
            if time.monotonic() > deadline or child.poll() is not None:
                raise OSError("the helper process did not enter a new user namespace")
            time.sleep(0.01)
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{child.pid}/{name}").write_text(f"0 {PROBE_HOST_ID} {PROBE_SIZE}\n")
        yield child.pid
    finally:
        child.kill()
        child.wait()


def idmap_unsupported_reason(path: str) -> str | None:
    """None if an idmapped mount of `path` can be made; otherwise why not.

    critest tries open_tree + mount_setattr(MOUNT_ATTR_IDMAP); the runtime's own idmapped
    bind makes those same calls (and then attaches the view, which is undone at once).
    """
    target = Path(tempfile.mkdtemp(prefix="idmap-probe-"))
    try:
        with _mapped_userns() as pid:
            idmapped_bind(Path(path), target, f"/proc/{pid}/ns/user", readonly=False)
    except OSError as exc:
        return str(exc)
    finally:
        unmount(target)
        target.rmdir()
    return None


def rootfs_path(info: dict[str, str]) -> str:
    """critest's rootfsPath: the parent of the verbose Status config's stateDir, else /var/lib."""
    try:
        state_dir = json.loads(info["config"]).get("stateDir", "")
    except (KeyError, ValueError, AttributeError):
        return "/var/lib"
    return str(Path(state_dir).parent) if state_dir else "/var/lib"


# ---- pods ---------------------------------------------------------------------------------------


def userns_pod(
    daemon: Daemon, handler: str, options: pb.NamespaceOption
) -> contextlib.AbstractContextManager[tuple[str, pb.PodSandboxConfig]]:
    """createNamespacePodSandbox with a log directory from createLogTempDir."""
    return critest.pod_with_log_directory(
        daemon,
        "user-namespaces-pod-",
        handler=handler,
        dns=pb.DNSConfig(),
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=options),
    )


def run_uid_map_container(daemon: Daemon, pod_id: str, pod_cfg: pb.PodSandboxConfig) -> str:
    """runUserNamespaceContainer: `cat /proc/self/uid_map` in the pod's namespaces; waits for exit."""
    name = "user-namespaces-container-" + critest.new_uuid()
    config = critest.container_config(
        "",
        command=["cat", "/proc/self/uid_map"],
        log_path=name + ".log",
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pod_cfg.linux.security_context.namespace_options
            )
        ),
    )
    config.metadata.name = name
    config.image.user_specified_image = critest.DEFAULT_IMAGE
    cid = critest.create_container(daemon, pod_id, pod_cfg, config)
    cri.start(daemon, cid)
    cri.wait_exited(daemon, cid)
    return name + ".log"


USERNS_FIELD = "config.linux.security_context.namespace_options.userns_options"


def assert_pod_refused(daemon: Daemon, handler: str, userns: pb.UserNamespace, details: str) -> None:
    """runUserNamespacePodWithError: RunPodSandbox must fail, INVALID_ARGUMENT with `details`."""
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name="user-namespaces-pod-" + critest.new_uuid(),
            uid=critest.UID_PREFIX + critest.new_uuid(),
            namespace=critest.NAMESPACE_PREFIX + critest.new_uuid(),
            attempt=critest.DEFAULT_ATTEMPT,
        ),
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(userns_options=userns))
        ),
    )
    created: list[str] = []
    try:
        cri.assert_refused(
            lambda: created.append(critest.run_pod(daemon, config, handler=handler)[0]),
            grpc.StatusCode.INVALID_ARGUMENT,
            details,
        )
    finally:
        for pod_id in created:
            cri.remove_pod(daemon, pod_id)


# ---- specs --------------------------------------------------------------------------------------


def test_pod_user_namespace_uses_requested_mapping(daemon: Daemon, userns_handler: str) -> None:
    """[k8s.io] Security Context UserNamespaces when Host idmap mount support is needed runtime should
    support NamespaceMode_POD"""
    status = daemon.runtime.Status(pb.StatusRequest(verbose=True), timeout=cri.CALL_TIMEOUT)
    path = rootfs_path(dict(status.info))
    reason = idmap_unsupported_reason(path)
    if reason is not None:
        pytest.skip(f"ID mapping is not supported with path: {path}: {reason}")
    options = pb.NamespaceOption(userns_options=pb.UserNamespace(mode=POD, uids=DEFAULT_MAPPING, gids=DEFAULT_MAPPING))
    with userns_pod(daemon, userns_handler, options) as (pod_id, pod_cfg):
        log_path = run_uid_map_container(daemon, pod_id, pod_cfg)
        critest.assert_log_matches(pod_cfg, log_path, r"\s+0\s+1000\s+100000\n")


def test_node_user_namespace_shares_host_mapping(daemon: Daemon, userns_handler: str) -> None:
    """[k8s.io] Security Context UserNamespaces when Host idmap mount support is not needed runtime should
    support NamespaceMode_NODE"""
    options = pb.NamespaceOption(userns_options=pb.UserNamespace(mode=NODE))
    with userns_pod(daemon, userns_handler, options) as (pod_id, pod_cfg):
        log_path = run_uid_map_container(daemon, pod_id, pod_cfg)
        host_lines = [line.split() for line in Path("/proc/self/uid_map").read_text().splitlines() if line.strip()]
        assert host_lines, "empty host uid_map"
        for fields in host_lines:
            assert len(fields) == 3, f"unexpected host mapping line: {fields}"
            critest.assert_log_matches(pod_cfg, log_path, r"\s+{}\s+{}\s+{}".format(*(re.escape(f) for f in fields)))


def test_more_than_one_mapping_is_refused(daemon: Daemon, userns_handler: str) -> None:
    """[k8s.io] Security Context UserNamespaces when Host idmap mount support is not needed runtime should
    fail if more than one mapping provided"""
    wrong = [
        pb.IDMapping(container_id=0, host_id=1000, length=100000),
        pb.IDMapping(container_id=0, host_id=2000, length=100000),
    ]
    assert_pod_refused(
        daemon,
        userns_handler,
        pb.UserNamespace(mode=POD, uids=wrong, gids=wrong),
        f"{USERNS_FIELD}: exactly one uid and one gid mapping are supported, got 2 and 2",
    )


def test_mapping_without_container_root_is_refused(daemon: Daemon, userns_handler: str) -> None:
    """[k8s.io] Security Context UserNamespaces when Host idmap mount support is not needed runtime should
    fail if container ID 0 is not mapped"""
    mapping = [pb.IDMapping(container_id=1, host_id=1000, length=100000)]
    assert_pod_refused(
        daemon,
        userns_handler,
        pb.UserNamespace(mode=POD, uids=mapping, gids=mapping),
        f"{USERNS_FIELD}: the uid mapping must start at container ID 0",
    )


def test_container_user_namespace_mode_is_refused(daemon: Daemon, userns_handler: str) -> None:
    """[k8s.io] Security Context UserNamespaces when Host idmap mount support is not needed runtime should
    fail with NamespaceMode_CONTAINER"""
    assert_pod_refused(
        daemon,
        userns_handler,
        pb.UserNamespace(mode=CONTAINER),
        f"{USERNS_FIELD}.mode CONTAINER is not supported; use POD or NODE",
    )


def test_target_user_namespace_mode_is_refused(daemon: Daemon, userns_handler: str) -> None:
    """[k8s.io] Security Context UserNamespaces when Host idmap mount support is not needed runtime should
    fail with NamespaceMode_TARGET"""
    assert_pod_refused(
        daemon,
        userns_handler,
        pb.UserNamespace(mode=TARGET),
        f"{USERNS_FIELD}.mode TARGET is not supported; use POD or NODE",
    )
