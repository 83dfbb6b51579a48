"""The CRI rules of runtime/validate.py and the conversions that apply them (convert.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.oci.features import RuntimeFeatures
from crishim.runtime import convert, validate
from crishim.runtime.errors import InvalidArgument

FIELD = "config.linux.sysctls"
FULL = RuntimeFeatures(recursive_read_only=True, idmap_mounts=True, user_namespaces=True)
BARE = RuntimeFeatures(recursive_read_only=False, idmap_mounts=False, user_namespaces=False)


def sysctls(wanted: dict[str, str], *, host_network: bool = False, host_ipc: bool = False) -> dict[str, str]:
    return validate.sysctls(wanted, host_network=host_network, host_ipc=host_ipc, field=FIELD)


@pytest.mark.parametrize(
    ("key", "namespace"),
    [
        ("kernel.shm_rmid_forced", "ipc"),
        ("kernel.shmmax", "ipc"),
        ("kernel.msgmnb", "ipc"),
        ("kernel.sem", "ipc"),
        ("fs.mqueue.msg_max", "ipc"),
        ("net.ipv4.ip_forward", "net"),
        ("kernel.hostname", "uts"),
        ("kernel.domainname", "uts"),
        # Per IPC namespace in the kernel, but runc and crun refuse to write them.
        ("kernel.shm_next_id", None),
        ("kernel.msg_next_id", None),
        ("kernel.sem_next_id", None),
        # Only the exact names: no prefix match on kernel.shm/kernel.msg/kernel.sem.
        ("kernel.shm", None),
        ("kernel.semfoo", None),
        ("vm.swappiness", None),
        ("kernel.pid_max", None),
    ],
)
def test_sysctl_namespaces(key: str, namespace: str | None) -> None:
    assert validate.sysctl_namespace(key) == namespace


def test_namespaced_sysctls_pass_in_dotted_form() -> None:
    wanted = {"kernel/shm_rmid_forced": "1", "net.core.somaxconn": "1024", "fs.mqueue.msg_max": "100"}
    assert sysctls(wanted) == {"kernel.shm_rmid_forced": "1", "net.core.somaxconn": "1024", "fs.mqueue.msg_max": "100"}


@pytest.mark.parametrize("key", ["kernel.shm_next_id", "kernel.msg_next_id", "kernel.sem_next_id"])
def test_ipc_id_allocators_are_refused_with_the_reason(key: str) -> None:
    with pytest.raises(InvalidArgument, match=rf"{FIELD}: sysctl '{key}' cannot be set: runc and crun refuse"):
        sysctls({key: "5"})


def test_host_wide_sysctl_is_refused_naming_what_a_pod_may_set() -> None:
    with pytest.raises(InvalidArgument, match=r"'vm.swappiness' is not namespaced.*kernel.shm_rmid_forced.*net\.\*"):
        sysctls({"vm.swappiness": "1"})


def test_sysctls_of_a_namespace_shared_with_the_host_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="not allowed with host IPC"):
        sysctls({"fs.mqueue.msg_max": "100"}, host_ipc=True)
    with pytest.raises(InvalidArgument, match="not allowed with host network"):
        sysctls({"net.ipv4.ip_forward": "1"}, host_network=True)
    # A host-network pod has the host's UTS namespace too.
    with pytest.raises(InvalidArgument, match="not allowed with host network"):
        sysctls({"kernel.domainname": "example"}, host_network=True)
    assert sysctls({"net.ipv4.ip_forward": "1"}, host_ipc=True) == {"net.ipv4.ip_forward": "1"}
    assert sysctls({"kernel.sem": "1 2 3 4"}, host_network=True) == {"kernel.sem": "1 2 3 4"}


def mapping(container_id: int = 0, length: int = 65536) -> pb.IDMapping:
    return pb.IDMapping(host_id=100000, container_id=container_id, length=length)


@pytest.mark.parametrize(
    ("userns", "message"),
    [
        (pb.UserNamespace(mode=pb.CONTAINER), "mode CONTAINER is not supported; use POD or NODE"),
        (pb.UserNamespace(mode=pb.POD, uids=[mapping(), mapping()], gids=[mapping()]), "got 2 and 1"),
        (pb.UserNamespace(mode=pb.POD, uids=[mapping(1)], gids=[mapping()]), "uid mapping must start"),
        (pb.UserNamespace(mode=pb.POD, uids=[mapping()], gids=[mapping(length=0)]), "gid mapping has length 0"),
    ],
)
def test_invalid_user_namespaces_are_refused(userns: pb.UserNamespace, message: str) -> None:
    options = pb.NamespaceOption(userns_options=userns)
    with pytest.raises(InvalidArgument, match=message):
        convert.user_namespace(options, "namespace_options")


def test_user_namespace_modes() -> None:
    assert convert.user_namespace(pb.NamespaceOption(), "n") is None
    assert convert.user_namespace(pb.NamespaceOption(userns_options=pb.UserNamespace(mode=pb.NODE)), "n") is None
    pod = pb.UserNamespace(mode=pb.POD, uids=[mapping()], gids=[mapping()])
    userns = convert.user_namespace(pb.NamespaceOption(userns_options=pod), "n")
    assert userns is not None
    assert userns.uid_mappings[0].host_id == 100000
    with pytest.raises(InvalidArgument, match="'crun-old' does not support user namespaces"):
        validate.user_namespace_support(BARE, "crun-old")


def test_pod_ipc_mode_is_pod_or_node() -> None:
    validate.sandbox_ipc_mode(pb.NamespaceOption(ipc=pb.NODE), "ns")
    with pytest.raises(InvalidArgument, match="ns.ipc CONTAINER is not supported for a pod sandbox"):
        validate.sandbox_ipc_mode(pb.NamespaceOption(ipc=pb.CONTAINER), "ns")


def test_privileged_container_rules() -> None:
    sc = pb.LinuxContainerSecurityContext(privileged=True)
    validate.privileged(pb.LinuxContainerSecurityContext(), False, True, "sc")
    validate.privileged(sc, True, False, "sc")
    with pytest.raises(InvalidArgument, match="sc.privileged needs a privileged pod sandbox"):
        validate.privileged(sc, False, False, "sc")
    with pytest.raises(InvalidArgument, match="cannot run in a pod user namespace"):
        validate.privileged(sc, True, True, "sc")


def test_every_mount_lands_at_an_absolute_path() -> None:
    with pytest.raises(InvalidArgument, match=r"config.mounts\[1\].container_path is empty"):
        validate.mount_paths([pb.Mount(container_path="/a"), pb.Mount()], "config.mounts")
    image = pb.Mount(container_path="data", image=pb.ImageSpec(image="busybox"))
    with pytest.raises(InvalidArgument, match=r"config.mounts\[0\].container_path 'data' must be absolute"):
        validate.mount_paths([image], "config.mounts")


def bind(tmp_path: Path, **kwargs: object) -> pb.Mount:
    return pb.Mount(container_path="/m", host_path=str(tmp_path), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"recursive_read_only": True}, "recursive_read_only needs readonly=true"),
        (
            {"recursive_read_only": True, "readonly": True, "propagation": pb.PROPAGATION_BIDIRECTIONAL},
            "needs PROPAGATION_PRIVATE, not PROPAGATION_BIDIRECTIONAL",
        ),
        ({"propagation": 7}, "propagation 7 is unknown"),
    ],
)
def test_bind_mount_rules(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        convert.bind_mount(bind(tmp_path, **kwargs), "config.mounts[0]", features=FULL, handler="crun")


def test_bind_mount_needs_what_the_handler_can_do(tmp_path: Path) -> None:
    rro = bind(tmp_path, readonly=True, recursive_read_only=True)
    with pytest.raises(InvalidArgument, match="'old-runc' does not support recursive read-only mounts"):
        convert.bind_mount(rro, "m", features=BARE, handler="old-runc")
    idmapped = bind(tmp_path, uidMappings=[mapping()], gidMappings=[mapping()])
    with pytest.raises(InvalidArgument, match="'old-runc' does not support idmapped mounts"):
        convert.bind_mount(idmapped, "m", features=BARE, handler="old-runc")
    assert convert.bind_mount(rro, "m", features=FULL, handler="crun").recursive_readonly


def test_bind_mount_source_is_absolute_existing_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    # A symlink anywhere in the path is resolved, not only in the last component.
    mount = pb.Mount(container_path="/m", host_path=str(tmp_path / "link" / "sub"))
    assert convert.bind_mount(mount, "m", features=FULL, handler="crun").host_path == str(tmp_path / "real" / "sub")
    with pytest.raises(InvalidArgument, match="host_path 'rel/path' must be absolute"):
        convert.bind_mount(pb.Mount(container_path="/m", host_path="rel/path"), "m", features=FULL, handler="crun")
    missing = pb.Mount(container_path="/m", host_path=str(tmp_path / "nope"))
    with pytest.raises(InvalidArgument, match="does not exist"):
        convert.bind_mount(missing, "m", features=FULL, handler="crun")


def test_device_rules() -> None:
    with pytest.raises(InvalidArgument, match=r"devices\[0\].host_path is empty"):
        convert.device(pb.Device(), "devices[0]")
    with pytest.raises(InvalidArgument, match="may only hold r, w and m"):
        convert.device(pb.Device(host_path="/dev/null", permissions="rwx"), "d")
    assert convert.device(pb.Device(host_path="/dev/null"), "d").container_path == "/dev/null"


def test_container_and_sandbox_metadata() -> None:
    with pytest.raises(InvalidArgument, match="config.metadata.name is empty"):
        validate.container_config(pb.ContainerConfig(image=pb.ImageSpec(image="busybox")))
    with pytest.raises(InvalidArgument, match="config.image.image is empty"):
        validate.container_config(pb.ContainerConfig(metadata=pb.ContainerMetadata(name="a")))
    with pytest.raises(InvalidArgument, match="config.metadata is required"):
        validate.sandbox_config(pb.PodSandboxConfig())
    with pytest.raises(InvalidArgument, match="config.metadata.namespace must not contain"):
        validate.sandbox_config(pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", namespace="a/b")))
