"""Frozen records of what the daemon created, as stored in SQLite.

Sandbox states::

    READY --StopPodSandbox / infra exit--> NOTREADY --RemovePodSandbox--> (gone)

Container states::

    CREATED --StartContainer--> RUNNING --exit / StopContainer--> EXITED
       |                                                           ^
       +--------------- start failed (runc error) -----------------+
    UNKNOWN: the runtime lost track (state dir gone after a reboot).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

SANDBOX_READY = "READY"
SANDBOX_NOTREADY = "NOTREADY"

CONTAINER_CREATED = "CREATED"
CONTAINER_RUNNING = "RUNNING"
CONTAINER_EXITED = "EXITED"
CONTAINER_UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class SandboxMeta:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    state: str
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
    network_torn_down: bool = False
    shm_path: str = ""
    userns: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContainerMeta:
    id: str
    sandbox_id: str
    name: str
    attempt: int
    state: str
    created_at: int
    config: bytes  # serialized runtime.v1.ContainerConfig
    image: str  # the image as the caller named it
    image_id: str  # sha256:... config digest, as PullImage returned
    image_ref: str  # repo digest (or ID) of the image used
    bundle: str
    rootfs: str
    runtime_handler: str
    log_path: str = ""  # absolute
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    conmon_pid: int = 0
    cgroups_path: str = ""
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    resources: str = ""  # JSON of the LinuxContainerResources last applied
    user: str = ""  # JSON {uid, gid, supplemental_groups}
    image_volumes: tuple[str, ...] = ()  # mount points of image volumes to unmount on removal
    mounts: str = ""  # JSON of the mounts as requested, for ContainerStatus
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


R = TypeVar("R", SandboxMeta, ContainerMeta)


def encode(record: SandboxMeta | ContainerMeta) -> str:
    data = dataclasses.asdict(record)
    data["config"] = record.config.hex()
    return json.dumps(data, separators=(",", ":"))


def decode(cls: type[R], text: str) -> R:
    data: dict[str, Any] = json.loads(text)
    data["config"] = bytes.fromhex(data["config"])
    known = {f.name for f in dataclasses.fields(cls)}
    clean = {k: v for k, v in data.items() if k in known}
    for key, value in clean.items():
        if isinstance(value, list):
            clean[key] = tuple(value)
    return cls(**clean)
