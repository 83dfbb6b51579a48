"""CRI protobuf messages -> the plain inputs oci/ understands, with validation.

Every invalid combination is refused here with INVALID_ARGUMENT naming the
field, before anything is created, so error paths have nothing to undo.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from crishim.cri_api import api_pb2
from crishim.oci.inputs import (
    AppArmorProfile,
    Device,
    HugepageLimit,
    IdMapping,
    Mount,
    NamespaceMode,
    Resources,
    SeccompProfile,
    SupplementalGroupsPolicy,
    UserNamespace,
    UserSpec,
)
from crishim.runtime.errors import InvalidArgument

NAMESPACE_MODES = {
    api_pb2.POD: NamespaceMode.POD,
    api_pb2.CONTAINER: NamespaceMode.CONTAINER,
    api_pb2.NODE: NamespaceMode.NODE,
    api_pb2.TARGET: NamespaceMode.TARGET,
}

PROPAGATION = {
    api_pb2.PROPAGATION_PRIVATE: "private",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}

# Sysctls that are namespaced (per pod) and so safe to set; the kernel's own list
# of net.* sysctls is per network namespace, the rest are host-wide.
NAMESPACED_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "kernel.shmmax",
    "kernel.shmall",
    "kernel.shmmni",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.domainname",
    "kernel.hostname",
}
NAMESPACED_SYSCTL_PREFIXES = ("net.", "fs.mqueue.")


def check_sysctls(sysctls: Mapping[str, str], *, host_network: bool, host_ipc: bool, field: str) -> dict[str, str]:
    """Only namespaced sysctls, and not those of a namespace shared with the host."""
    checked: dict[str, str] = {}
    for raw_key, value in sysctls.items():
        key = raw_key.replace("/", ".")
        ipc_kind = key in NAMESPACED_SYSCTLS and key.startswith(("kernel.shm", "kernel.msg", "kernel.sem"))
        ipc_kind = ipc_kind or key.startswith("fs.mqueue.")
        if key.startswith("net."):
            if host_network:
                raise InvalidArgument(f"{field}: sysctl {raw_key!r} is not allowed with host network")
        elif ipc_kind:
            if host_ipc:
                raise InvalidArgument(f"{field}: sysctl {raw_key!r} is not allowed with host IPC")
        elif key not in NAMESPACED_SYSCTLS:
            raise InvalidArgument(
                f"{field}: sysctl {raw_key!r} is not namespaced; only kernel.shm*, kernel.msg*, kernel.sem, "
                "fs.mqueue.* and net.* can be set per pod"
            )
        checked[key] = value
    return checked


def id_mappings(items: Iterable[api_pb2.IDMapping]) -> tuple[IdMapping, ...]:
    return tuple(IdMapping(container_id=m.container_id, host_id=m.host_id, size=m.length) for m in items)


def user_namespace(options: api_pb2.NamespaceOption, field: str) -> UserNamespace | None:
    """KEP-127 user namespaces: POD mode with exactly one uid and one gid mapping."""
    if not options.HasField("userns_options"):
        return None
    userns = options.userns_options
    if userns.mode == api_pb2.NODE:
        return None
    if userns.mode != api_pb2.POD:
        mode = api_pb2.NamespaceMode.Name(userns.mode)
        raise InvalidArgument(f"{field}.userns_options.mode {mode} is not supported; use POD or NODE")
    if len(userns.uids) != 1 or len(userns.gids) != 1:
        raise InvalidArgument(
            f"{field}.userns_options: exactly one uid and one gid mapping are supported, "
            f"got {len(userns.uids)} and {len(userns.gids)}"
        )
    uids, gids = id_mappings(userns.uids), id_mappings(userns.gids)
    for kind, mapping in (("uid", uids[0]), ("gid", gids[0])):
        if mapping.container_id != 0:
            raise InvalidArgument(f"{field}.userns_options: the {kind} mapping must start at container ID 0")
        if mapping.size == 0:
            raise InvalidArgument(f"{field}.userns_options: the {kind} mapping has length 0")
    return UserNamespace(uid_mappings=uids, gid_mappings=gids)


def resources(res: api_pb2.LinuxContainerResources | None) -> Resources | None:
    if res is None:
        return None
    return Resources(
        cpu_period=res.cpu_period,
        cpu_quota=res.cpu_quota,
        cpu_shares=res.cpu_shares,
        memory_limit=res.memory_limit_in_bytes,
        memory_swap=res.memory_swap_limit_in_bytes,
        cpuset_cpus=res.cpuset_cpus,
        cpuset_mems=res.cpuset_mems,
        hugepage_limits=tuple(HugepageLimit(page_size=h.page_size, limit=h.limit) for h in res.hugepage_limits),
        unified=dict(res.unified),
    )


def seccomp_profile(profile: api_pb2.SecurityProfile | None, legacy_path: str, field: str) -> SeccompProfile:
    """The structured field wins over the deprecated seccomp_profile_path."""
    if profile is not None:
        if profile.profile_type == api_pb2.SecurityProfile.Unconfined:
            return SeccompProfile(kind="unconfined")
        if profile.profile_type == api_pb2.SecurityProfile.Localhost:
            if not profile.localhost_ref:
                raise InvalidArgument(f"{field}.seccomp.localhost_ref is empty: name the profile file")
            return SeccompProfile(kind="localhost", path=profile.localhost_ref)
        return SeccompProfile(kind="runtime/default")
    if legacy_path in ("", "unconfined"):
        # api.proto: an empty path means unconfined for the deprecated field.
        return SeccompProfile(kind="unconfined")
    if legacy_path in ("runtime/default", "docker/default"):
        return SeccompProfile(kind="runtime/default")
    if legacy_path.startswith("localhost/"):
        return SeccompProfile(kind="localhost", path=legacy_path.removeprefix("localhost/"))
    raise InvalidArgument(
        f"{field}.seccomp_profile_path {legacy_path!r} is not runtime/default, unconfined or localhost/PATH"
    )


def apparmor_profile(profile: api_pb2.SecurityProfile | None, legacy_name: str, field: str) -> AppArmorProfile | None:
    if profile is not None:
        if profile.profile_type == api_pb2.SecurityProfile.Unconfined:
            return AppArmorProfile(kind="unconfined")
        if profile.profile_type == api_pb2.SecurityProfile.Localhost:
            if not profile.localhost_ref:
                raise InvalidArgument(f"{field}.apparmor.localhost_ref is empty: name the loaded profile")
            return AppArmorProfile(kind="localhost", name=profile.localhost_ref.removeprefix("localhost/"))
        return AppArmorProfile(kind="runtime/default")
    if not legacy_name:
        return None
    if legacy_name == "unconfined":
        return AppArmorProfile(kind="unconfined")
    if legacy_name == "runtime/default":
        return AppArmorProfile(kind="runtime/default")
    if legacy_name.startswith("localhost/"):
        return AppArmorProfile(kind="localhost", name=legacy_name.removeprefix("localhost/"))
    raise InvalidArgument(
        f"{field}.apparmor_profile {legacy_name!r} is not runtime/default, unconfined or localhost/NAME"
    )


def user_spec(sc: api_pb2.LinuxContainerSecurityContext, image_user: str, field: str) -> UserSpec:
    policy = (
        SupplementalGroupsPolicy.STRICT
        if sc.supplemental_groups_policy == api_pb2.Strict
        else SupplementalGroupsPolicy.MERGE
    )
    groups = tuple(int(g) for g in sc.supplemental_groups)
    if sc.HasField("run_as_group") and not (sc.HasField("run_as_user") or sc.run_as_username):
        raise InvalidArgument(f"{field}.run_as_group is set without run_as_user or run_as_username")
    gid = sc.run_as_group.value if sc.HasField("run_as_group") else None
    if sc.HasField("run_as_user"):
        return UserSpec(uid=sc.run_as_user.value, gid=gid, supplemental_groups=groups, policy=policy)
    if sc.run_as_username:
        return UserSpec(username=sc.run_as_username, gid=gid, supplemental_groups=groups, policy=policy)
    return UserSpec(image_user=image_user, supplemental_groups=groups, policy=policy)


def bind_mount(mount: api_pb2.Mount, field: str, *, rro_supported: bool, handler: str) -> Mount:
    """A host-path mount; a host path that is a symlink is resolved (as the kubelet expects)."""
    if not mount.container_path:
        raise InvalidArgument(f"{field}.container_path is empty")
    if not mount.host_path:
        raise InvalidArgument(f"{field}.host_path is empty for {mount.container_path!r}")
    propagation = PROPAGATION.get(mount.propagation)
    if propagation is None:
        raise InvalidArgument(f"{field}.propagation {mount.propagation} is unknown")
    if mount.recursive_read_only:
        if not mount.readonly:
            raise InvalidArgument(f"{field}: recursive_read_only needs readonly=true ({mount.container_path!r})")
        if propagation != "private":
            raise InvalidArgument(
                f"{field}: recursive_read_only needs PROPAGATION_PRIVATE, not {propagation} ({mount.container_path!r})"
            )
        if not rro_supported:
            raise InvalidArgument(
                f"{field}: runtime handler {handler!r} does not support recursive read-only mounts "
                f"({mount.container_path!r}); use a handler whose Status advertises them"
            )
    host_path = mount.host_path
    if os.path.islink(host_path):
        host_path = os.path.realpath(host_path)
    if not os.path.exists(host_path):
        raise InvalidArgument(f"{field}: host path {mount.host_path!r} does not exist")
    return Mount(
        container_path=mount.container_path,
        host_path=host_path,
        readonly=mount.readonly,
        recursive_readonly=mount.recursive_read_only,
        propagation=propagation,  # type: ignore[arg-type]
        uid_mappings=id_mappings(mount.uidMappings),
        gid_mappings=id_mappings(mount.gidMappings),
        options=tuple(mount.mount_options),
    )


def device(dev: api_pb2.Device, field: str) -> Device:
    if not dev.host_path:
        raise InvalidArgument(f"{field}.host_path is empty")
    if not os.path.exists(dev.host_path):
        raise InvalidArgument(f"{field}: host device {dev.host_path!r} does not exist")
    permissions = dev.permissions or "rwm"
    if set(permissions) - set("rwm"):
        raise InvalidArgument(f"{field}.permissions {permissions!r} may only hold r, w and m")
    return Device(host_path=dev.host_path, container_path=dev.container_path or dev.host_path, permissions=permissions)
