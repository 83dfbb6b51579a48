"""Plain-value inputs of the spec builders.

runtime/ converts CRI messages into these records after checking them
against the CRI rules (runtime/validate.py), so the builders trust them;
nothing here knows protobuf. Every record is frozen so a spec is a function
of its inputs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .features import RuntimeFeatures

Propagation = Literal["private", "rslave", "rshared"]


class NamespaceMode(enum.Enum):
    """How a container gets a namespace (api.proto NamespaceMode)."""

    POD = "pod"  # shared with the sandbox (infra container)
    CONTAINER = "container"  # a namespace of its own
    NODE = "node"  # the host's namespace
    TARGET = "target"  # the namespace of another container (ephemeral debug containers)


class SupplementalGroupsPolicy(enum.Enum):
    """api.proto SupplementalGroupsPolicy (KEP-3619)."""

    MERGE = "merge"  # the image's /etc/group memberships are added to what the pod asks
    STRICT = "strict"  # only the groups the pod asks for


@dataclass(frozen=True, slots=True)
class IdMapping:
    """One uid or gid range: container_id..+size maps to host_id..+size."""

    container_id: int
    host_id: int
    size: int

    def to_spec(self) -> dict[str, int]:
        return {"containerID": self.container_id, "hostID": self.host_id, "size": self.size}


@dataclass(frozen=True, slots=True)
class UserNamespace:
    """A pod user namespace: its mappings (KEP-127)."""

    uid_mappings: tuple[IdMapping, ...]
    gid_mappings: tuple[IdMapping, ...]


@dataclass(frozen=True, slots=True)
class Mount:
    """A bind (or other) mount into the container."""

    container_path: str
    host_path: str
    readonly: bool = False
    recursive_readonly: bool = False
    propagation: Propagation = "private"
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()
    type: str = "bind"
    options: tuple[str, ...] = ()
    # With a pod user namespace, volumes are idmapped to it; the pod's own small files
    # and its /dev/shm tmpfs are world-accessible and need (and on tmpfs allow) none.
    follow_pod_userns: bool = True


@dataclass(frozen=True, slots=True)
class Device:
    """A host device node exposed in the container."""

    host_path: str
    container_path: str
    permissions: str = "rwm"


@dataclass(frozen=True, slots=True)
class HugepageLimit:
    page_size: str  # "2MB", "1GB" as the kernel names the hugetlb files
    limit: int


@dataclass(frozen=True, slots=True)
class Resources:
    """Linux resources; zero/empty means "not set"."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit: int = 0
    memory_swap: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    unified: Mapping[str, str] = field(default_factory=dict)
    pids_limit: int = 0


@dataclass(frozen=True, slots=True)
class SeccompProfile:
    """kind: runtime/default, unconfined or localhost (then `path` is the profile file)."""

    kind: Literal["runtime/default", "unconfined", "localhost"] = "runtime/default"
    path: str = ""


@dataclass(frozen=True, slots=True)
class AppArmorProfile:
    """kind: runtime/default, unconfined or localhost (then `name` is the loaded profile)."""

    kind: Literal["runtime/default", "unconfined", "localhost"] = "runtime/default"
    name: str = ""


@dataclass(frozen=True, slots=True)
class UserSpec:
    """Who the process runs as.

    Either `uid` is set (CRI run_as_user, with optional `gid`), or `username`
    (CRI run_as_username), or `image_user` (the image's USER: "name", "uid",
    "uid:gid", "name:group"); all empty means root.
    """

    uid: int | None = None
    gid: int | None = None
    username: str = ""
    image_user: str = ""
    supplemental_groups: tuple[int, ...] = ()
    policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE


@dataclass(frozen=True, slots=True)
class SandboxSpecInput:
    """Everything the infra (pause) container's spec depends on."""

    id: str
    rootfs: str
    args: tuple[str, ...]
    hostname: str = ""
    netns_path: str | None = None  # None: the host network (NODE mode)
    ipc_mode: NamespaceMode = NamespaceMode.POD
    pid_mode: NamespaceMode = NamespaceMode.POD
    shm_path: str = ""  # per-pod tmpfs bound at /dev/shm; empty: a private tmpfs
    resolv_conf_path: str = ""
    hostname_path: str = ""
    hosts_path: str = ""
    sysctls: Mapping[str, str] = field(default_factory=dict)
    cgroups_path: str = ""
    oom_score_adj: int | None = None  # runtime/ passes the kubelet's -998, clamped to what it may set
    privileged: bool = False
    readonly_rootfs: bool = True
    userns: UserNamespace | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    resources: Resources | None = None
    seccomp: SeccompProfile = SeccompProfile()


@dataclass(frozen=True, slots=True)
class ContainerSpecInput:
    """Everything a workload container's spec depends on.

    `sandbox_pid` is the infra container's PID: POD-mode namespaces are
    joined through /proc/PID/ns/*; `netns_path` (the pinned pod netns)
    takes precedence for the network, and `pod_namespaces` ("ipc", "uts" ->
    pin path, a pod without an infra container) for those. `target_pid`
    serves TARGET mode.
    """

    id: str
    rootfs: str
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: UserSpec = UserSpec()
    hostname: str = ""
    tty: bool = False
    stdin: bool = False
    sandbox_pid: int | None = None
    netns_path: str | None = None
    pod_namespaces: Mapping[str, str] = field(default_factory=dict)
    network_mode: NamespaceMode = NamespaceMode.POD
    pid_mode: NamespaceMode = NamespaceMode.CONTAINER
    ipc_mode: NamespaceMode = NamespaceMode.POD
    target_pid: int | None = None
    userns: UserNamespace | None = None
    mounts: tuple[Mount, ...] = ()
    devices: tuple[Device, ...] = ()
    resources: Resources | None = None
    cgroups_path: str = ""
    oom_score_adj: int | None = None
    sysctls: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    privileged: bool = False
    capabilities_add: tuple[str, ...] = ()
    capabilities_drop: tuple[str, ...] = ()
    capabilities_ambient: tuple[str, ...] = ()
    no_new_privs: bool = False
    readonly_rootfs: bool = False
    masked_paths: tuple[str, ...] | None = None  # None: the defaults
    readonly_paths: tuple[str, ...] | None = None  # None: the defaults
    seccomp: SeccompProfile = SeccompProfile()
    apparmor: AppArmorProfile | None = None  # None: not asked for
    rlimits: tuple[tuple[str, int, int], ...] = ()  # (RLIMIT_NOFILE, soft, hard)
    features: RuntimeFeatures = RuntimeFeatures()  # idmap_mounts: volumes follow the pod's user namespace
    rootfs_path_for_users: Path | None = None  # where /etc/passwd is read; defaults to rootfs
