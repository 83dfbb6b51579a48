"""CRI protobuf messages -> the plain inputs oci/ understands.

Each conversion first applies the CRI rules of validate.py (or, for a value
only parsing can check, refuses it here), so oci/ receives nothing it must
check again. The flows convert before they create anything, so a refusal
has nothing to undo.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Literal

from crishim.cri_api import api_pb2
from crishim.oci.features import RuntimeFeatures
from crishim.oci.inputs import (
    AppArmorProfile,
    Device,
    HugepageLimit,
    IdMapping,
    Mount,
    NamespaceMode,
    Propagation,
    Resources,
    SeccompProfile,
    SupplementalGroupsPolicy,
    UserNamespace,
    UserSpec,
)
from crishim.runtime import validate
from crishim.runtime.errors import InvalidArgument

NAMESPACE_MODES = {
    api_pb2.POD: NamespaceMode.POD,
    api_pb2.CONTAINER: NamespaceMode.CONTAINER,
    api_pb2.NODE: NamespaceMode.NODE,
    api_pb2.TARGET: NamespaceMode.TARGET,
}

PROPAGATION: dict[int, Propagation] = {
    api_pb2.PROPAGATION_PRIVATE: "private",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}


def id_mappings(items: Iterable[api_pb2.IDMapping]) -> tuple[IdMapping, ...]:
    return tuple(IdMapping(container_id=m.container_id, host_id=m.host_id, size=m.length) for m in items)


def user_namespace(options: api_pb2.NamespaceOption, field: str) -> UserNamespace | None:
    """The pod's user namespace (KEP-127), None for the host's."""
    if not options.HasField("userns_options"):
        return None
    userns = options.userns_options
    validate.user_namespace_options(userns, field)
    if userns.mode == api_pb2.NODE:
        return None
    return UserNamespace(uid_mappings=id_mappings(userns.uids), gid_mappings=id_mappings(userns.gids))


def resources(res: api_pb2.LinuxContainerResources | None) -> Resources | None:
    if res is None:
        return None
    validate.resources(res, "linux.resources")
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


ProfileKind = Literal["runtime/default", "unconfined", "localhost"]


def _structured_profile(profile: api_pb2.SecurityProfile, field: str, missing_ref: str) -> tuple[ProfileKind, str]:
    """The kind of a SecurityProfile and, for Localhost, its localhost_ref (which must be set)."""
    if profile.profile_type == api_pb2.SecurityProfile.Unconfined:
        return "unconfined", ""
    if profile.profile_type == api_pb2.SecurityProfile.Localhost:
        if not profile.localhost_ref:
            raise InvalidArgument(f"{field}.localhost_ref is empty: {missing_ref}")
        return "localhost", profile.localhost_ref
    return "runtime/default", ""


def seccomp_profile(profile: api_pb2.SecurityProfile | None, legacy_path: str, field: str) -> SeccompProfile:
    """The structured field wins over the deprecated seccomp_profile_path."""
    if profile is not None:
        kind, ref = _structured_profile(profile, f"{field}.seccomp", "name the profile file")
        return SeccompProfile(kind=kind, path=ref)
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
    """The structured field wins over the deprecated apparmor_profile; neither set: None."""
    if profile is not None:
        kind, ref = _structured_profile(profile, f"{field}.apparmor", "name the loaded profile")
        return AppArmorProfile(kind=kind, name=ref.removeprefix("localhost/"))
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


def bind_mount(mount: api_pb2.Mount, field: str, *, features: RuntimeFeatures, handler: str) -> Mount:
    """A host-path mount; its source with every symlink resolved (as the kubelet expects)."""
    validate.bind_mount(mount, field, features=features, handler=handler)
    host_path = os.path.realpath(mount.host_path)
    if not os.path.exists(host_path):
        raise InvalidArgument(f"{field}: host path {mount.host_path!r} does not exist")
    return Mount(
        container_path=mount.container_path,
        host_path=host_path,
        readonly=mount.readonly,
        recursive_readonly=mount.recursive_read_only,
        propagation=PROPAGATION[mount.propagation],
        uid_mappings=id_mappings(mount.uidMappings),
        gid_mappings=id_mappings(mount.gidMappings),
        options=tuple(mount.mount_options),
    )


def device(dev: api_pb2.Device, field: str) -> Device:
    validate.device(dev, field)
    if not os.path.exists(dev.host_path):
        raise InvalidArgument(f"{field}: host device {dev.host_path!r} does not exist")
    return Device(
        host_path=dev.host_path,
        container_path=dev.container_path or dev.host_path,
        permissions=dev.permissions or "rwm",
    )
