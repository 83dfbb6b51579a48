"""Records of what the daemon created: immutable metadata plus a status that changes.

A record is a `Record(meta, status)` snapshot. The metadata is written once,
when RunPodSandbox or CreateContainer commits, and never changes; everything
that changes afterwards lives in the status, which only the store's
`update_status(id, fn)` replaces (see store.py). A new status makes a new
Record object, so a snapshot in hand never changes under its reader, and
anything derived from a record can be cached for as long as the object lives.

Sandbox states::

    READY --StopPodSandbox / infra exit--> NOTREADY --RemovePodSandbox--> (gone)

Container states::

    CREATED --StartContainer--> RUNNING --exit / StopContainer--> EXITED
       |                                                           ^
       +--------------- start failed (runc error) -----------------+
    UNKNOWN: the runtime lost track (state dir gone after a reboot).

A container created from a checkpoint is CREATED with `restore_pending` and no
process: its pid and conmon's are set (`update_meta`) when StartContainer restores it.

While `runc start` runs, ContainerStatus.starting is set: an exit recorded
meanwhile neither deletes the runc state under the start nor tells
subscribers STOPPED before StartContainer has told them STARTED.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

SANDBOX_READY = "READY"
SANDBOX_NOTREADY = "NOTREADY"

CONTAINER_CREATED = "CREATED"
CONTAINER_RUNNING = "RUNNING"
CONTAINER_EXITED = "EXITED"
CONTAINER_UNKNOWN = "UNKNOWN"

# A status field with this metadata is kept in memory only (see ContainerStatus.starting).
NOT_STORED = {"stored": False}


@dataclass(frozen=True, slots=True)
class SandboxMeta:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    created_at: int  # ns since the epoch, as CRI reports it
    runtime_handler: str
    config: bytes  # serialized runtime.v1.PodSandboxConfig, kept verbatim
    bundle: str
    log_directory: str = ""
    netns_path: str = ""  # empty: host network
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    pid: int = 0  # infra (pause) process
    conmon_pid: int = 0
    cgroup_parent: str = ""
    cgroups_path: str = ""
    shm_path: str = ""
    userns: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # False: no pause process; the pod's IPC and UTS namespaces are pinned at namespace_paths.
    infra_container: bool = True
    namespace_paths: dict[str, str] = field(default_factory=dict)  # "ipc"/"uts" -> pin


@dataclass(frozen=True, slots=True)
class SandboxStatus:
    state: str = SANDBOX_READY
    network_torn_down: bool = False


@dataclass(frozen=True, slots=True)
class ContainerMeta:
    id: str
    sandbox_id: str
    name: str
    attempt: int
    created_at: int
    config: bytes  # serialized runtime.v1.ContainerConfig
    image: str  # the image as the caller named it
    image_id: str  # sha256:... config digest, as PullImage returned
    image_ref: str  # repo digest (or ID) of the image used
    bundle: str
    rootfs: str
    runtime_handler: str
    log_path: str = ""  # absolute
    pid: int = 0
    conmon_pid: int = 0
    cgroups_path: str = ""
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    user: str = ""  # JSON {uid, gid, supplemental_groups}
    image_volumes: tuple[str, ...] = ()  # mount points of image volumes to unmount on removal
    mounts: str = ""  # JSON of the mounts as requested, for ContainerStatus
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    state: str = CONTAINER_CREATED
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    resources: str = ""  # JSON of the LinuxContainerResources last applied (UpdateContainerResources)
    # Created from a checkpoint archive: StartContainer restores it (`runc restore`) instead of starting it.
    restore_pending: bool = False
    # Inside `runc start`. Not stored: no start outlives the daemon process that ran it.
    starting: bool = field(default=False, metadata=NOT_STORED)


class HasId(Protocol):
    @property
    def id(self) -> str: ...


class HasState(Protocol):
    @property
    def state(self) -> str: ...


M = TypeVar("M", bound=HasId)  # SandboxMeta or ContainerMeta
S = TypeVar("S", bound=HasState)  # SandboxStatus or ContainerStatus


# eq=False: compared and hashed by identity, so derived values can be cached per snapshot
# (weakref_slot lets such caches drop them with the record).
@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class Record(Generic[M, S]):
    """One sandbox or container as it is now: its metadata and its current status."""

    meta: M
    status: S


Sandbox = Record[SandboxMeta, SandboxStatus]
Container = Record[ContainerMeta, ContainerStatus]
