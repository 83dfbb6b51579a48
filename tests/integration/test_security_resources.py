"""Security context, resources and mounts, checked from inside running containers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import node
from tests.support.cri import (
    code_of,
    container_config,
    container_status,
    exec_checked,
    pod_config,
    remove_pod,
    run_pod,
    start_container,
)
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

SLEEP = ["sleep", "1000"]


def crun_userns_pod(daemon: Daemon, name: str, host_id: int) -> tuple[str, pb.PodSandboxConfig]:
    """A pod on crun whose user namespace maps container IDs 0-65535 from `host_id`."""
    mapping = [pb.IDMapping(host_id=host_id, container_id=0, length=65536)]
    userns = pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.POD, uids=mapping, gids=mapping))
    linux = pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(namespace_options=userns))
    return run_pod(daemon, name, handler="crun", linux=linux)


def status_field(daemon: Daemon, cid: str, field: str) -> str:
    for line in exec_checked(daemon, cid, ["cat", "/proc/self/status"]).splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{field} not in /proc/self/status")


def cap_bits(names: list[str]) -> int:
    from crishim.oci.capabilities import ALL_CAPABILITIES

    order = list(ALL_CAPABILITIES)
    return sum(1 << order.index("CAP_" + n) for n in names)


@pytest.fixture(scope="module")
def pod(live_daemon: Daemon):
    sid, config = run_pod(
        live_daemon,
        "security",
        linux=pb.LinuxPodSandboxConfig(
            sysctls={"kernel.shm_rmid_forced": "1", "net.ipv4.ip_unprivileged_port_start": "100"}
        ),
    )
    yield sid, config
    remove_pod(live_daemon, sid)


def create(daemon: Daemon, pod, name: str, image: str, cmd: list[str] = SLEEP, **linux) -> str:
    sid, config = pod
    return start_container(
        daemon, sid, config, container_config(name, image, cmd, linux=pb.LinuxContainerConfig(**linux))
    )


def create_code(daemon: Daemon, pod, name: str, image: str, **linux) -> tuple[grpc.StatusCode, str]:
    sid, config = pod
    try:
        daemon.runtime.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=sid,
                config=container_config(name, image, SLEEP, linux=pb.LinuxContainerConfig(**linux)),
                sandbox_config=config,
            ),
            timeout=30,
        )
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_run_as_user_group_and_supplemental_groups(live_daemon: Daemon, busybox: str, pod) -> None:
    sc = pb.LinuxContainerSecurityContext(
        run_as_user=pb.Int64Value(value=1001), run_as_group=pb.Int64Value(value=2000), supplemental_groups=[3000]
    )
    cid = create(live_daemon, pod, "ids", busybox, security_context=sc)
    assert exec_checked(live_daemon, cid, ["id", "-u"]).strip() == "1001"
    assert exec_checked(live_daemon, cid, ["id", "-g"]).strip() == "2000"
    groups = set(exec_checked(live_daemon, cid, ["id", "-G"]).split())
    assert {"2000", "3000", "1234"} <= groups  # 1234: test-group lists test-user in the image (Merge)
    user = container_status(live_daemon, cid).user.linux
    assert (user.uid, user.gid) == (1001, 2000)
    assert 3000 in user.supplemental_groups


def test_strict_supplemental_groups_ignore_the_image(live_daemon: Daemon, busybox: str, pod) -> None:
    sc = pb.LinuxContainerSecurityContext(
        run_as_user=pb.Int64Value(value=1001), supplemental_groups=[3000], supplemental_groups_policy=pb.Strict
    )
    cid = create(live_daemon, pod, "strict", busybox, security_context=sc)
    assert "1234" not in exec_checked(live_daemon, cid, ["id", "-G"]).split()


def test_run_as_group_without_user_is_refused(live_daemon: Daemon, busybox: str, pod) -> None:
    sc = pb.LinuxContainerSecurityContext(run_as_group=pb.Int64Value(value=10))
    code, details = create_code(live_daemon, pod, "nogroup", busybox, security_context=sc)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_as_group" in details


def test_capabilities_add_and_drop(live_daemon: Daemon, busybox: str, pod) -> None:
    sc = pb.LinuxContainerSecurityContext(
        capabilities=pb.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["ALL"])
    )
    cid = create(live_daemon, pod, "caps", busybox, security_context=sc)
    assert int(status_field(live_daemon, cid, "CapEff"), 16) == cap_bits(["NET_ADMIN"])


def test_default_capabilities_and_seccomp(live_daemon: Daemon, busybox: str, pod) -> None:
    sc = pb.LinuxContainerSecurityContext(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault))
    cid = create(live_daemon, pod, "defaults", busybox, security_context=sc)
    eff = int(status_field(live_daemon, cid, "CapEff"), 16)
    assert eff & cap_bits(["CHOWN", "KILL"])
    assert not eff & cap_bits(["SYS_ADMIN", "NET_ADMIN"])
    assert status_field(live_daemon, cid, "Seccomp") == "2"


def test_no_new_privs_and_unconfined_seccomp(live_daemon: Daemon, busybox: str, pod) -> None:
    sc = pb.LinuxContainerSecurityContext(
        no_new_privs=True, seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    )
    cid = create(live_daemon, pod, "nnp", busybox, security_context=sc)
    assert status_field(live_daemon, cid, "NoNewPrivs") == "1"
    assert status_field(live_daemon, cid, "Seccomp") == "0"


def test_readonly_rootfs_refuses_writes(live_daemon: Daemon, busybox: str, pod) -> None:
    cid = create(
        live_daemon, pod, "rofs", busybox, security_context=pb.LinuxContainerSecurityContext(readonly_rootfs=True)
    )
    answer = live_daemon.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["touch", "/file"], timeout=10))
    assert answer.exit_code != 0
    assert b"Read-only" in answer.stderr


def test_masked_and_readonly_paths_as_given(live_daemon: Daemon, busybox: str, pod) -> None:
    sc = pb.LinuxContainerSecurityContext(masked_paths=["/etc/hostname"], readonly_paths=["/tmp"])
    cid = create(live_daemon, pod, "masks", busybox, security_context=sc)
    assert exec_checked(live_daemon, cid, ["cat", "/etc/hostname"]) == ""
    answer = live_daemon.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["touch", "/tmp/x"], timeout=10))
    assert answer.exit_code != 0


def test_pod_sysctls_are_applied(live_daemon: Daemon, busybox: str, pod) -> None:
    cid = create(live_daemon, pod, "sysctl", busybox)
    assert exec_checked(live_daemon, cid, ["cat", "/proc/sys/kernel/shm_rmid_forced"]).strip() == "1"
    assert exec_checked(live_daemon, cid, ["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]).strip() == "100"


def test_host_level_sysctl_is_refused(live_daemon: Daemon) -> None:
    config = pod_config("badsysctl", live_daemon, linux=pb.LinuxPodSandboxConfig(sysctls={"vm.swappiness": "1"}))
    with pytest.raises(grpc.RpcError) as info:
        live_daemon.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "vm.swappiness" in info.value.details()


@pytest.mark.parametrize(
    ("userns", "message"),
    [
        (pb.UserNamespace(mode=pb.CONTAINER), "mode CONTAINER"),
        (
            pb.UserNamespace(
                mode=pb.POD,
                uids=[pb.IDMapping(host_id=100000, container_id=0, length=65536)] * 2,
                gids=[pb.IDMapping(host_id=100000, container_id=0, length=65536)],
            ),
            "exactly one",
        ),
        (
            pb.UserNamespace(
                mode=pb.POD,
                uids=[pb.IDMapping(host_id=100000, container_id=1, length=65536)],
                gids=[pb.IDMapping(host_id=100000, container_id=0, length=65536)],
            ),
            "container ID 0",
        ),
    ],
)
def test_invalid_user_namespaces_are_refused(live_daemon: Daemon, userns: pb.UserNamespace, message: str) -> None:
    config = pod_config(
        "userns-bad",
        live_daemon,
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(userns_options=userns))
        ),
    )
    with pytest.raises(grpc.RpcError) as info:
        live_daemon.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (dict(readonly=False, recursive_read_only=True), "readonly=true"),
        (
            dict(readonly=True, recursive_read_only=True, propagation=pb.PROPAGATION_BIDIRECTIONAL),
            "PROPAGATION_PRIVATE",
        ),
        (
            dict(readonly=True, recursive_read_only=True, propagation=pb.PROPAGATION_HOST_TO_CONTAINER),
            "PROPAGATION_PRIVATE",
        ),
    ],
)
def test_invalid_recursive_readonly_mounts_are_refused(
    live_daemon: Daemon, busybox: str, pod, tmp_path: Path, mount: dict[str, Any], message: str
) -> None:
    sid, config = pod
    cfg = container_config(
        "rro-bad", busybox, SLEEP, mounts=[pb.Mount(container_path="/m", host_path=str(tmp_path), **mount)]
    )
    with pytest.raises(grpc.RpcError) as info:
        live_daemon.runtime.CreateContainer(
            pb.CreateContainerRequest(pod_sandbox_id=sid, config=cfg, sandbox_config=config)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_recursive_readonly_mount_makes_submounts_readonly(
    live_daemon: Daemon, busybox: str, pod, tmp_path: Path
) -> None:
    from crishim.runtime.mounts import mount_tmpfs, unmount

    (tmp_path / "sub").mkdir()
    mount_tmpfs(tmp_path / "sub")
    try:
        sid, config = pod
        cfg = container_config(
            "rro",
            busybox,
            SLEEP,
            mounts=[pb.Mount(container_path="/m", host_path=str(tmp_path), readonly=True, recursive_read_only=True)],
        )
        cid = start_container(live_daemon, sid, config, cfg)
        answer = live_daemon.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=["touch", "/m/sub/x"], timeout=10)
        )
        assert answer.exit_code != 0
        assert b"Read-only" in answer.stderr
        live_daemon.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    finally:
        unmount(tmp_path / "sub")


def test_symlinked_host_path_is_resolved(live_daemon: Daemon, busybox: str, pod, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("through the link\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    sid, config = pod
    cfg = container_config(
        "symlink", busybox, SLEEP, mounts=[pb.Mount(container_path="/v", host_path=str(tmp_path / "link"))]
    )
    cid = start_container(live_daemon, sid, config, cfg)
    assert exec_checked(live_daemon, cid, ["cat", "/v/f"]) == "through the link\n"


def test_device_is_exposed(live_daemon: Daemon, busybox: str, pod) -> None:
    sid, config = pod
    cfg = container_config(
        "dev", busybox, SLEEP, devices=[pb.Device(host_path="/dev/zero", container_path="/dev/myzero", permissions="r")]
    )
    cid = start_container(live_daemon, sid, config, cfg)
    assert exec_checked(live_daemon, cid, ["sh", "-c", "head -c 4 /dev/myzero | od -An -tx1"]).split() == ["00"] * 4


def test_resources_applied_and_updated_in_place(live_daemon: Daemon, busybox: str, pod) -> None:
    resources = pb.LinuxContainerResources(
        memory_limit_in_bytes=64 << 20, cpu_period=100000, cpu_quota=50000, cpu_shares=512
    )
    cid = create(live_daemon, pod, "res", busybox, resources=resources)
    cgroup = container_status(live_daemon, cid)
    assert cgroup.resources.linux.memory_limit_in_bytes == 64 << 20
    if node.pure_v2():  # the container's own cgroup, wherever the driver put it
        directory = node.container_cgroup(live_daemon, cid)
        limit_file, quota = directory / "memory.max", directory / "cpu.max"
    else:
        limit_file = next(iter(Path("/sys/fs/cgroup/memory").rglob(f"{cid}/memory.limit_in_bytes")))
        quota = next(iter(Path("/sys/fs/cgroup/cpu").rglob(f"{cid}/cpu.cfs_quota_us")))
    assert int(limit_file.read_text()) == 64 << 20
    new = pb.LinuxContainerResources(
        memory_limit_in_bytes=128 << 20, cpu_period=100000, cpu_quota=20000, cpu_shares=256
    )
    live_daemon.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=cid, linux=new))
    assert int(limit_file.read_text()) == 128 << 20
    assert quota.read_text().split()[0] == "20000"
    assert container_status(live_daemon, cid).resources.linux.memory_limit_in_bytes == 128 << 20


def test_privileged_container_needs_a_privileged_pod(live_daemon: Daemon, busybox: str, pod) -> None:
    code, details = create_code(
        live_daemon, pod, "priv", busybox, security_context=pb.LinuxContainerSecurityContext(privileged=True)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "privileged" in details


# What every container's /dev holds (the OCI default devices and the console).
DEFAULT_DEVICES = {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "console"}


def _device_nodes(directory: Path) -> set[str]:
    """Names of the character and block devices directly in `directory` (a privileged container gets them all)."""
    return {
        entry.name
        for entry in directory.iterdir()
        if not entry.is_symlink() and (entry.is_char_device() or entry.is_block_device()) and entry.name != "console"
    }


def test_privileged_container_gets_host_capabilities_and_devices(live_daemon: Daemon, busybox: str) -> None:
    privileged = pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(privileged=True))
    sid, config = run_pod(live_daemon, "privileged", linux=privileged)
    try:
        cfg = container_config(
            "priv",
            busybox,
            SLEEP,
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(privileged=True)),
        )
        host_devices = _device_nodes(Path("/dev"))
        assert host_devices - DEFAULT_DEVICES, f"the host shows no device beyond the defaults: {host_devices}"
        cid = start_container(live_daemon, sid, config, cfg)
        host_bounding = next(
            line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapBnd:")
        ).split()[1]
        assert status_field(live_daemon, cid, "CapEff") == host_bounding
        assert status_field(live_daemon, cid, "Seccomp") == "0"
        # Every device node of the host's /dev, not only the defaults every container gets.
        in_container = set(exec_checked(live_daemon, cid, ["ls", "-1", "/dev"]).split())
        assert host_devices <= in_container, sorted(host_devices - in_container)
    finally:
        remove_pod(live_daemon, sid)


def test_user_namespace_pod_on_crun(live_daemon: Daemon, busybox: str) -> None:
    sid, config = crun_userns_pod(live_daemon, "userns", 200000)
    try:
        cid = start_container(live_daemon, sid, config, container_config("inside", busybox, SLEEP))
        assert exec_checked(live_daemon, cid, ["cat", "/proc/self/uid_map"]).split() == ["0", "200000", "65536"]
        assert exec_checked(live_daemon, cid, ["id", "-u"]).strip() == "0"
    finally:
        remove_pod(live_daemon, sid)


def test_missing_host_path_is_refused(live_daemon: Daemon, busybox: str, pod) -> None:
    sid, config = pod
    cfg = container_config("nohost", busybox, SLEEP, mounts=[pb.Mount(container_path="/x", host_path="/no/such/dir")])
    assert (
        code_of(
            live_daemon.runtime.CreateContainer,
            pb.CreateContainerRequest(pod_sandbox_id=sid, config=cfg, sandbox_config=config),
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_user_namespace_rootfs_belongs_to_the_container_root(live_daemon: Daemon, busybox: str) -> None:
    sid, config = crun_userns_pod(live_daemon, "userns-rootfs", 300000)
    try:
        cid = start_container(live_daemon, sid, config, container_config("owner", busybox, SLEEP))
        # Image files show as the container's root, not as the overflow "nobody".
        assert exec_checked(live_daemon, cid, ["stat", "-c", "%u:%g", "/etc/passwd", "/bin"]).split() == ["0:0", "0:0"]
        exec_checked(live_daemon, cid, ["sh", "-c", "echo written > /etc/new-file && mkdir /root/dir"])
        upper = live_daemon.root / "containers" / cid / "upper"
        assert (upper / "etc" / "new-file").stat().st_uid == 300000  # the write landed as the mapped root
    finally:
        remove_pod(live_daemon, sid)
    assert f"/containers/{cid}/" not in Path("/proc/self/mountinfo").read_text()  # idmapped views gone too
