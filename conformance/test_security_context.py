"""critest "Security Context": namespaces, users and groups, capabilities, seccomp, no_new_privs, paths.

Each test sends the pod and container configs critest's spec sends and checks what
it checks (pkg/validate/security_context_linux.go). Where the busybox stand-in image
lacks a tool critest's image has, the test reads the same kernel interface the tool
reads, and says so.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

NGINX_IMAGE = "registry.k8s.io/e2e-test-images/nginx:1.14-2"
NONEWPRIVS_IMAGE = "registry.k8s.io/e2e-test-images/nonewprivs:1.3"
PREDEFINED_GROUP_IMAGE = "gcr.io/k8s-staging-cri-tools/test-image-predefined-group"
PREDEFINED_GROUP_UID = 1000
PREDEFINED_GROUP_GID = 50000

POD = pb.POD
NODE = pb.NODE
CONTAINER = pb.CONTAINER


# ---- pod and container shapes critest uses in this file ----------------------------------------


def namespace_pod(
    daemon: Daemon, options: pb.NamespaceOption
) -> contextlib.AbstractContextManager[tuple[str, pb.PodSandboxConfig]]:
    """createNamespacePodSandbox: namespace options and an empty DNS config."""
    security = pb.LinuxSandboxSecurityContext(namespace_options=options)
    return critest.pod(
        daemon, critest.pod_config(daemon, "NamespaceOption-PodSandbox-", dns=pb.DNSConfig(), security_context=security)
    )


def sc_config(
    prefix: str,
    sc: pb.LinuxContainerSecurityContext,
    *,
    command: Sequence[str] | None = critest.PAUSE_COMMAND,
    image: str = critest.DEFAULT_IMAGE,
    logged: bool = False,
) -> pb.ContainerConfig:
    """A container with `sc` as its security context (critest's create*Container helpers).

    `logged` gives it the log path NAME.log, under its pod's log directory.
    """
    config = critest.container_config(
        prefix, image=image, command=command, linux=pb.LinuxContainerConfig(security_context=sc)
    )
    if logged:
        config.log_path = config.metadata.name + ".log"
    return config


def sc_container(
    daemon: Daemon,
    pod_id: str,
    pod_cfg: pb.PodSandboxConfig,
    prefix: str,
    sc: pb.LinuxContainerSecurityContext,
    *,
    command: Sequence[str] | None = critest.PAUSE_COMMAND,
    image: str = critest.DEFAULT_IMAGE,
) -> str:
    """Creates a container with `sc` as its security context; returns its id."""
    config = sc_config(prefix, sc, command=command, image=image)
    return critest.create_container(daemon, pod_id, pod_cfg, config)


def run_to_exit(
    daemon: Daemon,
    pod_id: str,
    pod_cfg: pb.PodSandboxConfig,
    prefix: str,
    sc: pb.LinuxContainerSecurityContext,
    *,
    command: Sequence[str] | None,
    image: str = critest.DEFAULT_IMAGE,
) -> str:
    """Runs a logging container with `sc` until it exits; returns its log path, for the log checks."""
    config = sc_config(prefix, sc, command=command, image=image, logged=True)
    cid = critest.create_container(daemon, pod_id, pod_cfg, config)
    cri.start(daemon, cid)
    cri.wait_exited(daemon, cid)
    return config.log_path


def namespace_container(
    daemon: Daemon,
    pod_id: str,
    pod_cfg: pb.PodSandboxConfig,
    prefix: str,
    image: str,
    options: pb.NamespaceOption,
    command: Sequence[str] | None,
) -> str:
    """createNamespaceContainer: the pod's namespace options repeated on the container."""
    sc = pb.LinuxContainerSecurityContext(namespace_options=options)
    return sc_container(daemon, pod_id, pod_cfg, prefix, sc, command=command, image=image)


def started(daemon: Daemon, cid: str) -> str:
    critest.start_and_wait_running(daemon, cid)
    return cid


def check_network_management(daemon: Daemon, cid: str, manageable: bool) -> None:
    """checkNetworkManagement: `brctl addbr foobar` needs CAP_NET_ADMIN."""
    resp = cri.exec_sync(daemon, cid, ["brctl", "addbr", "foobar"])
    msg = f"brctl addbr: exit {resp.exit_code}, stdout {resp.stdout!r}, stderr {resp.stderr!r}"
    assert critest.exec_fails(resp) != manageable, msg


# ---- NamespaceOption ---------------------------------------------------------------------------


def test_host_pid_container_sees_other_host_pid_processes(daemon: Daemon) -> None:
    """[k8s.io] Security Context NamespaceOption runtime should support HostPID"""
    options = pb.NamespaceOption(pid=NODE, ipc=POD, network=POD)
    with namespace_pod(daemon, options) as (pod_id, pod_cfg):
        nginx = started(
            daemon,
            namespace_container(daemon, pod_id, pod_cfg, "nginx-container-hostpid-", NGINX_IMAGE, options, None),
        )
        out = critest.exec_ok(
            daemon,
            nginx,
            ["sh", "-c", "while [ ! -f /var/run/nginx.pid ]; do sleep 1; done && cat /var/run/nginx.pid"],
        )
        nginx_pid = out.strip()
        busybox = started(
            daemon,
            namespace_container(
                daemon,
                pod_id,
                pod_cfg,
                "container-with-HostPID-test-",
                critest.DEFAULT_IMAGE,
                options,
                ["sh", "-c", "sleep 1000"],
            ),
        )
        # critest passes "||" and "true" as pidof arguments, not through a shell.
        pids = critest.exec_ok(daemon, busybox, ["pidof", "nginx", "||", "true"]).strip()
        assert pids, "nginx's pid should be seen by hostpid containers"
        assert nginx_pid in pids, f"nginx pid {nginx_pid} not in pidof output {pids!r}"


def _shm_ids(proc_sysvipc_shm: str) -> set[str]:
    """The shmid column of /proc/sysvipc/shm (what `ipcs -m` lists)."""
    return {line.split()[1] for line in proc_sysvipc_shm.splitlines()[1:] if len(line.split()) > 1}


def _check_host_ipc(daemon: Daemon, mode: pb.NamespaceMode) -> None:
    out = subprocess.run(["ipcmk", "-M", "1048576"], check=True, capture_output=True, text=True).stdout
    segment = out.strip().removeprefix("Shared memory id: ")
    try:
        options = pb.NamespaceOption(pid=POD, ipc=mode, network=POD)
        with namespace_pod(daemon, options) as (pod_id, pod_cfg):
            cid = started(
                daemon,
                namespace_container(
                    daemon,
                    pod_id,
                    pod_cfg,
                    "namespace-container-",
                    critest.DEFAULT_IMAGE,
                    options,
                    critest.PAUSE_COMMAND,
                ),
            )
            # critest runs `ipcs -m`; Debian's busybox has no ipcs applet, so read the file ipcs reads:
            # it lists the segments of the reader's IPC namespace.
            seen = _shm_ids(critest.exec_ok(daemon, cid, ["cat", "/proc/sysvipc/shm"]))
            if mode == NODE:
                assert segment in seen, f"host segment {segment} not visible with host IPC: {seen}"
            else:
                assert segment not in seen, f"host segment {segment} visible in a pod IPC namespace: {seen}"
    finally:
        subprocess.run(["ipcrm", "-m", segment], check=False, capture_output=True)


def test_host_ipc_container_sees_host_shared_memory(daemon: Daemon) -> None:
    """[k8s.io] Security Context NamespaceOption runtime should support HostIpc is true"""
    _check_host_ipc(daemon, NODE)


def test_pod_ipc_container_does_not_see_host_shared_memory(daemon: Daemon) -> None:
    """[k8s.io] Security Context NamespaceOption runtime should support HostIpc is false"""
    _check_host_ipc(daemon, POD)


def test_pod_pid_namespace_pid1_is_not_the_container(daemon: Daemon) -> None:
    """[k8s.io] Security Context NamespaceOption runtime should support PodPID"""
    options = pb.NamespaceOption(pid=POD)
    with namespace_pod(daemon, options) as (pod_id, pod_cfg):
        cid = started(
            daemon,
            namespace_container(
                daemon, pod_id, pod_cfg, "nginx-container-process-namespace-", NGINX_IMAGE, options, None
            ),
        )
        # Wait for nginx to be up (critest sleeps a second), then PID 1 must be the pod's, not nginx.
        critest.exec_ok(daemon, cid, ["sh", "-c", "while [ ! -f /var/run/nginx.pid ]; do sleep 0.2; done"])
        cmdline = critest.exec_ok(daemon, cid, ["cat", "/proc/1/cmdline"])
        assert "master process" not in cmdline, f"pid 1 is nginx in a pod PID namespace: {cmdline!r}"


def test_container_pid_namespace_pid1_is_the_container(daemon: Daemon) -> None:
    """[k8s.io] Security Context NamespaceOption runtime should support ContainerPID"""
    options = pb.NamespaceOption(pid=CONTAINER)
    with namespace_pod(daemon, options) as (pod_id, pod_cfg):
        cid = started(
            daemon,
            namespace_container(daemon, pod_id, pod_cfg, "nginx-container-pid-", NGINX_IMAGE, options, None),
        )
        critest.exec_ok(
            daemon, cid, ["sh", "-c", 'while ! cat /proc/1/cmdline | grep "master process"; do sleep 1; done']
        )


@contextlib.contextmanager
def _host_listener() -> Iterator[str]:
    """A TCP server on all host interfaces, answering "hello", while the block runs; yields its port."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield str(srv.getsockname()[1])
    finally:
        srv.close()
        thread.join(timeout=5)


def _check_host_network(daemon: Daemon, host_network: bool) -> None:
    options = pb.NamespaceOption(pid=POD, ipc=POD, network=NODE if host_network else POD)
    security = pb.LinuxSandboxSecurityContext(namespace_options=options)
    with (
        _host_listener() as port,
        critest.pod_with_log_directory(
            daemon, "NamespaceOption-PodSandbox-", dns=pb.DNSConfig(), security_context=security
        ) as (pod_id, pod_cfg),
    ):
        # critest polls the log; waiting for the exit makes "absent" mean the whole output.
        sc = pb.LinuxContainerSecurityContext(namespace_options=options)
        log_path = run_to_exit(
            daemon, pod_id, pod_cfg, "container-with-HostNetwork-test-", sc, command=["sh", "-c", "netstat -ln"]
        )
        listed = any(":" + port in e.log for e in critest.log_entries(pod_cfg, log_path))
        assert listed == host_network, (
            f"host port {port} {'missing from' if host_network else 'present in'} the container's "
            f"netstat -ln: {critest.log_entries(pod_cfg, log_path)}"
        )


def test_host_network_container_sees_host_listening_port(daemon: Daemon) -> None:
    """[k8s.io] Security Context NamespaceOption runtime should support HostNetwork is true"""
    _check_host_network(daemon, True)


def test_pod_network_container_does_not_see_host_listening_port(daemon: Daemon) -> None:
    """[k8s.io] Security Context NamespaceOption runtime should support HostNetwork is false"""
    _check_host_network(daemon, False)


# ---- bucket ------------------------------------------------------------------------------------


def test_supplemental_groups_are_added(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support SupplementalGroups"""
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(supplemental_groups=[1234, 5678])
        cid = started(daemon, sc_container(daemon, pod_id, pod_cfg, "container-with-SupplementalGroups-test-", sc))
        groups = critest.exec_ok(daemon, cid, ["id", "-G"]).strip().split(" ")
        assert "1234" in groups, groups
        assert "5678" in groups, groups


def test_run_as_user_sets_uid(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support RunAsUser"""
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=1001))
        cid = started(daemon, sc_container(daemon, pod_id, pod_cfg, "container-with-RunAsUser-test-", sc))
        assert critest.exec_ok(daemon, cid, ["id", "-u"]) == "1001\n"


def test_run_as_username_sets_user(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support RunAsUserName"""
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(run_as_username="nobody")
        cid = started(daemon, sc_container(daemon, pod_id, pod_cfg, "container-with-RunAsUserName-test-", sc))
        assert critest.exec_ok(daemon, cid, ["id", "-nu"]) == "nobody\n"


def test_run_as_group_sets_gid(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support RunAsGroup"""
    with critest.pod_with_log_directory(daemon) as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(
            run_as_user=pb.Int64Value(value=1001), run_as_group=pb.Int64Value(value=1002)
        )
        command = ["sh", "-c", "echo $(id -u):$(id -g)"]
        log_path = run_to_exit(daemon, pod_id, pod_cfg, "container-with-RunAsGroup-test-", sc, command=command)
        critest.assert_log_contains(pod_cfg, log_path, "1001:1002\n")


def test_run_as_group_without_run_as_user_is_rejected(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should return error if RunAsGroup is set without RunAsUser"""
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(run_as_group=pb.Int64Value(value=1002))
        config = sc_config(
            "container-with-RunAsGroup-without-RunAsUser-test-", sc, command=["sh", "-c", "echo $(id -u):$(id -g)"]
        )
        critest.prepare_image(daemon, pod_cfg, config)
        cri.assert_refused(
            lambda: cri.create_container(daemon, pod_id, pod_cfg, config),
            grpc.StatusCode.INVALID_ARGUMENT,
            "config.linux.security_context.run_as_group is set without run_as_user or run_as_username",
        )


def _check_rootfs(daemon: Daemon, readonly: bool) -> None:
    with critest.pod_with_log_directory(daemon) as (pod_id, pod_cfg):
        prefix = f"container-with-ReadOnlyRootfs-{'true' if readonly else 'false'}-test-"
        sc = pb.LinuxContainerSecurityContext(readonly_rootfs=readonly)
        command = ["sh", "-c", "touch test.go && [ -f test.go ] && echo 'Found'"]
        log_path = run_to_exit(daemon, pod_id, pod_cfg, prefix, sc, command=command)
        if readonly:
            critest.assert_log_contains(pod_cfg, log_path, "touch: test.go: Read-only file system\n", "stderr")
        else:
            critest.assert_log_contains(pod_cfg, log_path, "Found\n", "stdout")


def test_writable_rootfs_allows_writes(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support that ReadOnlyRootfs is false"""
    _check_rootfs(daemon, False)


def test_readonly_rootfs_refuses_writes(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support that ReadOnlyRootfs is true"""
    _check_rootfs(daemon, True)


def test_privileged_container_can_manage_network(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support Privileged is true"""
    with critest.privileged_pod(daemon, True) as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(privileged=True)
        cid = started(daemon, sc_container(daemon, pod_id, pod_cfg, "container-with-isPrivileged-test-", sc))
        check_network_management(daemon, cid, True)


def test_unprivileged_container_cannot_manage_network(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support Privileged is false"""
    with critest.privileged_pod(daemon, False) as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(privileged=False)
        cid = started(daemon, sc_container(daemon, pod_id, pod_cfg, "container-with-notPrivileged-test-", sc))
        check_network_management(daemon, cid, False)


def _caps(add: Sequence[str] = (), drop: Sequence[str] = ()) -> pb.LinuxContainerSecurityContext:
    return pb.LinuxContainerSecurityContext(
        capabilities=pb.Capability(add_capabilities=list(add), drop_capabilities=list(drop))
    )


def test_added_capability_is_granted(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support adding capability"""
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        cid = started(
            daemon,
            sc_container(daemon, pod_id, pod_cfg, "container-with-added-capability-test-", _caps(add=["NET_ADMIN"])),
        )
        check_network_management(daemon, cid, True)
        plain = started(
            daemon,
            critest.create_default_container(daemon, pod_id, pod_cfg, "container-with-notCapability-test-"),
        )
        check_network_management(daemon, plain, False)


def test_dropped_capability_is_denied(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support dropping capability"""
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        cid = started(
            daemon,
            sc_container(daemon, pod_id, pod_cfg, "container-with-dropped-capability-test-", _caps(drop=["NET_RAW"])),
        )
        resp = cri.exec_sync(daemon, cid, ["ping", "127.0.0.1"])
        assert critest.exec_fails(resp), f"ping without NET_RAW succeeded: {resp.stdout!r}"
        assert resp.stdout, "ping printed nothing on stdout"
        assert "permission denied" in resp.stderr.decode(errors="replace"), resp.stderr


_CAP_BND_NONE = re.compile(r"CapBnd:\s0000000000000000")


def _bounding_set(daemon: Daemon, add: Sequence[str], drop: Sequence[str], prefix: str) -> str:
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        cid = started(daemon, sc_container(daemon, pod_id, pod_cfg, prefix, _caps(add=add, drop=drop)))
        resp = cri.exec_sync(daemon, cid, ["cat", "/proc/self/status"])
        assert resp.exit_code == 0, resp
        assert resp.stderr == b"", resp
        return resp.stdout.decode()


def test_add_all_capabilities_fills_bounding_set(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support adding ALL capabilities"""
    status = _bounding_set(daemon, ["ALL"], [], "container-with-added-all-capability-test-")
    assert not _CAP_BND_NONE.search(status), status


def test_drop_all_capabilities_empties_bounding_set(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support dropping ALL capabilities"""
    status = _bounding_set(daemon, [], ["ALL"], "container-with-dropped-all-capability-test-")
    assert _CAP_BND_NONE.search(status), status


def test_masked_path_cannot_be_run(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support MaskedPaths"""
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(masked_paths=["/bin/ls"])
        cid = started(daemon, sc_container(daemon, pod_id, pod_cfg, "container-with-maskedpaths", sc))
        # The masking itself: executing the masked path fails.
        direct = cri.exec_sync(daemon, cid, ["/bin/ls"])
        assert critest.exec_fails(direct), f"masked /bin/ls still ran: {direct.stdout!r}"
        # critest's check: the shell looks `ls` up on PATH and execs the masked /bin/ls (the test
        # image's busybox shell execs its applets, as the upstream busybox image's does).
        resp = cri.exec_sync(daemon, cid, ["/bin/sh", "-c", "ls"])
        assert critest.exec_fails(resp), f"`sh -c ls` ran the masked /bin/ls: {resp.stdout!r}"
        assert resp.stderr == b"/bin/sh: ls: Permission denied\n", resp.stderr


def test_readonly_path_refuses_writes(daemon: Daemon) -> None:
    """[k8s.io] Security Context bucket runtime should support ReadonlyPaths"""
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(readonly_paths=["/tmp"])
        cid = started(daemon, sc_container(daemon, pod_id, pod_cfg, "container-with-readonlypaths", sc))
        resp = cri.exec_sync(daemon, cid, ["touch", "/tmp/test"])
        assert critest.exec_fails(resp), "touch in a read-only path succeeded"
        assert resp.stderr == b"touch: /tmp/test: Read-only file system\n", resp.stderr


# ---- SupplementalGroupsPolicy ------------------------------------------------------------------


def _check_supplemental_groups_policy(
    daemon: Daemon, policy: pb.SupplementalGroupsPolicy, expected_groups: list[int]
) -> None:
    status = daemon.runtime.Status(pb.StatusRequest(), timeout=cri.CALL_TIMEOUT)
    if not status.features.supplemental_groups_policy:
        pytest.skip("The runtime does not support SupplementalGroupsPolicy feature")
    with critest.pod_with_log_directory(daemon) as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(
            run_as_user=pb.Int64Value(value=PREDEFINED_GROUP_UID),
            supplemental_groups=[1234],
            supplemental_groups_policy=policy,
        )
        config = sc_config(
            "container-with-SupplementalGroupsPolicyMerge-",
            sc,
            image=PREDEFINED_GROUP_IMAGE,
            command=["sh", "-c", "id -G; sleep infinity"],
            logged=True,
        )
        log_path = config.log_path
        cid = critest.create_container(daemon, pod_id, pod_cfg, config)
        cri.start(daemon, cid)
        expected_user = pb.ContainerUser(
            linux=pb.LinuxContainerUser(
                uid=PREDEFINED_GROUP_UID, gid=PREDEFINED_GROUP_UID, supplemental_groups=expected_groups
            )
        )

        # critest polls for RUNNING + this user + a log line together; the user of a running
        # container never changes, so wait for the other two and then compare it once.
        status = cri.eventually(
            lambda: cri.container_status(daemon, cid),
            lambda s: s.state == pb.CONTAINER_RUNNING and bool(critest.log_entries(pod_cfg, log_path)),
            timeout=60.0,
            what="RUNNING and a log line",
        )
        user = pb.ContainerUser()
        user.CopyFrom(status.user)
        groups = sorted(user.linux.supplemental_groups)
        del user.linux.supplemental_groups[:]
        user.linux.supplemental_groups.extend(groups)
        assert user == expected_user, f"ContainerStatus.user is {user}, expected {expected_user}"
        expected = " ".join(str(g) for g in expected_groups) + "\n"
        critest.assert_log_contains(pod_cfg, log_path, expected, "stdout")
        assert critest.exec_ok(daemon, cid, ["id", "-G"]) == expected


def test_merge_policy_keeps_image_groups_and_adds_supplemental(daemon: Daemon) -> None:
    """[k8s.io] Security Context SupplementalGroupsPolicy when SupplementalGroupsPolicy=Merge (Default) if
    the container's primary UID belongs to some groups in the image, runtime should add
    SupplementalGroups to them"""
    _check_supplemental_groups_policy(daemon, pb.Merge, [PREDEFINED_GROUP_UID, 1234, PREDEFINED_GROUP_GID])


def test_strict_policy_ignores_image_groups(daemon: Daemon) -> None:
    """[k8s.io] Security Context SupplementalGroupsPolicy when SupplementalGroupsPolicy=Strict even if the
    container's primary UID belongs to some groups in the image, runtime should not add
    SupplementalGroups to them"""
    _check_supplemental_groups_policy(daemon, pb.Strict, [PREDEFINED_GROUP_UID, 1234])


# ---- SeccompProfilePath ------------------------------------------------------------------------

BLOCK_HOSTNAME_PROFILE = """{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]
}"""
BLOCK_CHMOD_PROFILE = """{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]
}"""
SECCOMP_STATUS_CMD = ["grep", "Seccomp:", "/proc/self/status"]
UNCONFINED = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)


@pytest.fixture
def seccomp_profiles() -> Iterator[dict[str, str]]:
    """critest writes its localhost profiles to a fresh host temp dir and passes their paths."""
    profile_dir = Path(tempfile.mkdtemp(prefix="seccomp-tests"))
    try:
        paths = {}
        for name, text in (
            ("block-host-name.json", BLOCK_HOSTNAME_PROFILE),
            ("block-chmod.json", BLOCK_CHMOD_PROFILE),
        ):
            (profile_dir / name).write_text(text)
            (profile_dir / name).chmod(0o600)
            paths[name] = str(profile_dir / name)
        yield paths
    finally:
        shutil.rmtree(profile_dir, ignore_errors=True)


def localhost(path: str) -> pb.SecurityProfile:
    return pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=path)


@contextlib.contextmanager
def seccomp_container(daemon: Daemon, profile: pb.SecurityProfile | None) -> Iterator[str]:
    """seccompTestContainer: the profile on both the pod and a `sh -c top` container, started."""
    sandbox_sc = pb.LinuxSandboxSecurityContext()
    container_sc = pb.LinuxContainerSecurityContext()
    if profile is not None:
        sandbox_sc.seccomp.CopyFrom(profile)
        container_sc.seccomp.CopyFrom(profile)
    config = critest.pod_config(daemon, "seccomp-sandbox-", security_context=sandbox_sc)
    with critest.pod(daemon, config) as (pod_id, pod_cfg):
        yield started(
            daemon, sc_container(daemon, pod_id, pod_cfg, "seccomp-container-" + critest.new_uuid(), container_sc)
        )


def seccomp_mode(daemon: Daemon, cid: str) -> str:
    """The Seccomp: field of an exec'd process: 0 disabled, 2 filter."""
    out = critest.exec_ok(daemon, cid, SECCOMP_STATUS_CMD)
    return out.split(":", 1)[1].strip()


def test_unconfined_seccomp_disables_filtering(daemon: Daemon) -> None:
    """[k8s.io] Security Context SeccompProfilePath should support seccomp unconfined on the container"""
    with seccomp_container(daemon, UNCONFINED) as cid:
        assert seccomp_mode(daemon, cid) == "0"


def test_localhost_seccomp_profile_blocks_its_syscalls(daemon: Daemon, seccomp_profiles: dict[str, str]) -> None:
    """[k8s.io] Security Context SeccompProfilePath should support seccomp localhost profile on the
    container"""
    with seccomp_container(daemon, localhost(seccomp_profiles["block-chmod.json"])) as cid:
        resp = cri.exec_sync(daemon, cid, ["chmod", "400", "/"])
        assert critest.exec_fails(resp), "chmod ran under a profile that blocks it"
        assert "Operation not permitted" in resp.stderr.decode(errors="replace"), resp.stderr


def test_runtime_default_seccomp_filters(daemon: Daemon) -> None:
    """[k8s.io] Security Context SeccompProfilePath should support seccomp default on the container"""
    # An empty SecurityProfile is profile_type RuntimeDefault.
    with seccomp_container(daemon, pb.SecurityProfile()) as cid:
        assert seccomp_mode(daemon, cid) == "2"


def test_nil_seccomp_profile_is_unconfined(daemon: Daemon) -> None:
    """[k8s.io] Security Context SeccompProfilePath should support nil profile, which is unconfined"""
    with seccomp_container(daemon, None) as cid:
        assert seccomp_mode(daemon, cid) == "0"


def _check_set_hostname(daemon: Daemon, profile: pb.SecurityProfile, *, privileged: bool, settable: bool) -> None:
    """createSeccompContainer + checkSetHostname: `hostname ANewHostName` in a `sleep 60` container."""
    pod_manager = critest.privileged_pod(daemon, True) if privileged else critest.default_pod(daemon)
    with pod_manager as (pod_id, pod_cfg):
        sc = pb.LinuxContainerSecurityContext(
            privileged=privileged,
            seccomp=profile,
            capabilities=pb.Capability(add_capabilities=[] if privileged else ["SYS_ADMIN"]),
        )
        cid = started(
            daemon,
            sc_container(
                daemon,
                pod_id,
                pod_cfg,
                "container-with-block-hostname-seccomp-profile-test-",
                sc,
                command=["sleep", "60"],
            ),
        )
        resp = cri.exec_sync(daemon, cid, ["hostname", "ANewHostName"])
        msg = f"hostname: exit {resp.exit_code}, stdout {resp.stdout!r}, stderr {resp.stderr!r}"
        assert critest.exec_fails(resp) != settable, msg


def test_unconfined_seccomp_with_sys_admin_can_set_hostname(daemon: Daemon) -> None:
    """[k8s.io] Security Context SeccompProfilePath runtime should not block setting host name with
    unconfined seccomp and SYS_ADMIN"""
    _check_set_hostname(daemon, UNCONFINED, privileged=False, settable=True)


def test_seccomp_profile_blocks_sethostname_despite_sys_admin(daemon: Daemon, seccomp_profiles: dict[str, str]) -> None:
    """[k8s.io] Security Context SeccompProfilePath runtime should support an seccomp profile that blocks
    setting hostname with SYS_ADMIN"""
    _check_set_hostname(daemon, localhost(seccomp_profiles["block-host-name.json"]), privileged=False, settable=False)


def test_privileged_container_ignores_seccomp_profile(daemon: Daemon, seccomp_profiles: dict[str, str]) -> None:
    """[k8s.io] Security Context SeccompProfilePath runtime should ignore a seccomp profile that blocks
    setting hostname when privileged"""
    _check_set_hostname(daemon, localhost(seccomp_profiles["block-host-name.json"]), privileged=True, settable=True)


# ---- NoNewPrivs --------------------------------------------------------------------------------


def _effective_uid_line(daemon: Daemon, no_new_privs: bool) -> None:
    with critest.pod_with_log_directory(daemon) as (pod_id, pod_cfg):
        prefix = f"alpine-nnp-{'true' if no_new_privs else 'false'}-"
        sc = pb.LinuxContainerSecurityContext(no_new_privs=no_new_privs, run_as_user=pb.Int64Value(value=1000))
        log_path = run_to_exit(daemon, pod_id, pod_cfg, prefix, sc, image=NONEWPRIVS_IMAGE, command=None)
        # The image runs a setuid-root program printing its effective uid.
        critest.assert_log_contains(pod_cfg, log_path, f"Effective uid: {1000 if no_new_privs else 0}\n")


def test_no_new_privs_blocks_setuid_escalation(daemon: Daemon) -> None:
    """[k8s.io] Security Context NoNewPrivs should not allow privilege escalation when true"""
    _effective_uid_line(daemon, True)


def test_setuid_escalates_without_no_new_privs(daemon: Daemon) -> None:
    """[k8s.io] Security Context NoNewPrivs should allow privilege escalation when false"""
    _effective_uid_line(daemon, False)
