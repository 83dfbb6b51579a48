"""The pod checkpoint archive (CheckpointPod, RestorePod): one tar around one container archive each.

Neither containerd nor CRI-O defines a pod archive, so crishim does, reusing the
container archive (archive.py) unchanged inside it:

    pod.dump                  JSON: the pod's PodSandboxConfig, its runtime handler,
                              its containers in creation order (name, ID, CRI
                              ContainerConfig, member), where it was taken (provenance.py)
    containers/<id>.tar       each container's archive, in the CRI-O/Podman layout

A container's archive keeps its own layout, so `checkpointctl` reads it once
taken out of the pod archive. Members are named by container ID, not by name:
an ID is always a safe file name. The configs are protobuf JSON (json_format),
kept as JSON objects here: this module knows the layout, not the CRI messages.

`unpack_pod_archive` checks everything a restore relies on before anything is
created: pod.dump parses, names each container once, every member it names is
there and is itself a readable container archive (its headers read to the end,
its data only skipped). Anything else raises CorruptArchive and leaves `dest`
empty.
"""

from __future__ import annotations

import json
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crishim.runtime.checkpoint import archive, provenance, safe_tar
from crishim.runtime.checkpoint.archive import Abandoned, CorruptArchive

POD_DUMP = "pod.dump"
CONTAINERS_DIRECTORY = "containers"
# What pod.dump says it is: a container archive given as a pod archive is told apart by it.
KIND = "crishim-pod-checkpoint"


def container_member(container_id: str) -> str:
    return f"{CONTAINERS_DIRECTORY}/{container_id}.tar"


@dataclass(frozen=True, slots=True)
class ArchivedContainer:
    """One container of the pod as pod.dump records it."""

    name: str
    id: str
    member: str
    config: dict[str, Any]  # the CRI ContainerConfig it was created with, as protobuf JSON


@dataclass(frozen=True, slots=True)
class PodDump:
    """pod.dump, parsed: the pod and its containers, in the order they are to be restored."""

    sandbox_id: str
    runtime_handler: str
    config: dict[str, Any]  # the CRI PodSandboxConfig, as protobuf JSON
    containers: list[ArchivedContainer]
    origin: dict[str, Any] = field(default_factory=dict)
    checkpointed_at_ns: int = 0


def pod_dump(dump: PodDump) -> bytes:
    value = {
        "kind": KIND,
        "podSandboxId": dump.sandbox_id,
        "runtimeHandler": dump.runtime_handler,
        "config": dump.config,
        "containers": [{"name": c.name, "id": c.id, "archive": c.member, "config": c.config} for c in dump.containers],
        "checkpointedTime": archive.go_time(dump.checkpointed_at_ns),
        provenance.KEY: dump.origin,
    }
    return json.dumps(value, indent=2).encode()


def parse_pod_dump(data: bytes) -> PodDump:
    """pod.dump's contents, or CorruptArchive saying what is wrong with them."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise CorruptArchive(f"{POD_DUMP} is not JSON: {exc}") from exc
    if not isinstance(value, dict) or value.get("kind") != KIND:
        raise CorruptArchive(f"{POD_DUMP} is not a crishim pod checkpoint's (no kind {KIND!r})")
    config, listed = value.get("config"), value.get("containers")
    if not isinstance(config, dict):
        raise CorruptArchive(f"{POD_DUMP} has no pod config object")
    if not isinstance(listed, list) or not listed:
        raise CorruptArchive(f"{POD_DUMP} lists no containers")
    containers = [_container(entry) for entry in listed]
    names = [c.name for c in containers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CorruptArchive(f"{POD_DUMP} names container(s) {', '.join(twice)} more than once")
    origin = value.get(provenance.KEY)
    return PodDump(
        sandbox_id=str(value.get("podSandboxId", "")),
        runtime_handler=str(value.get("runtimeHandler", "")),
        config=config,
        containers=containers,
        origin=origin if isinstance(origin, dict) else {},
    )


def _container(entry: object) -> ArchivedContainer:
    if not isinstance(entry, dict):
        raise CorruptArchive(f"{POD_DUMP}: a container entry is not an object")
    name, cid, member, config = (entry.get(k) for k in ("name", "id", "archive", "config"))
    if not isinstance(name, str) or not name:
        raise CorruptArchive(f"{POD_DUMP}: a container entry has no name")
    if not isinstance(cid, str) or not cid or member != container_member(cid):
        raise CorruptArchive(f"{POD_DUMP}: container {name!r} names no archive of the form containers/<id>.tar")
    if not isinstance(config, dict):
        raise CorruptArchive(f"{POD_DUMP}: container {name!r} has no config object")
    return ArchivedContainer(name, cid, member, config)


@dataclass(frozen=True, slots=True)
class UnpackedPod:
    """A checked pod archive unpacked into `root`: pod.dump parsed, the container archives beside it."""

    root: Path
    dump: PodDump

    def container_archive(self, container: ArchivedContainer) -> Path:
        return self.root / container.member


def unpack_pod_archive(location: Path, dest: Path, abort: threading.Event) -> UnpackedPod:
    """Blocking: checks and unpacks the pod archive into the empty directory `dest`.

    Only pod.dump and the container archives are taken out (checked by safe_tar), other
    members are skipped. A truncated or corrupt archive raises CorruptArchive with `dest`
    left empty: a refused RestorePod leaves nothing behind.
    """
    try:
        with archive.open_tar(location) as tar:  # plain as written, or compressed (gzip, bzip2, xz, zstd)
            for member in tar:
                if abort.is_set():
                    raise Abandoned(f"unpacking {location} was abandoned")
                if _wanted(member):
                    safe_tar.extract(tar, member, dest, strict=True)
        if not (dest / POD_DUMP).is_file():
            raise CorruptArchive(f"it has no {POD_DUMP} (a container checkpoint, or not a pod checkpoint)")
        dump = parse_pod_dump((dest / POD_DUMP).read_bytes())
        for container in dump.containers:
            _check_container_archive(dest / container.member, container)
        return UnpackedPod(dest, dump)
    except BaseException as exc:
        archive.empty_directory(dest)
        if isinstance(exc, tarfile.TarError | EOFError):
            raise CorruptArchive(f"it is not a readable tar archive: {exc}") from exc
        raise


def _wanted(member: tarfile.TarInfo) -> bool:
    if member.name == POD_DUMP:
        return member.isfile()
    if member.name == CONTAINERS_DIRECTORY:
        return member.isdir()
    parent, _, name = member.name.partition("/")
    return parent == CONTAINERS_DIRECTORY and "/" not in name and name.endswith(".tar") and member.isfile()


def _check_container_archive(path: Path, container: ArchivedContainer) -> None:
    """Its headers read to the end (data skipped): a cut one fails here, not after the pod is made."""
    if not path.is_file():
        raise CorruptArchive(f"it lacks {container.member}, the archive of container {container.name!r}")
    try:
        with tarfile.open(path, "r:") as tar:
            tops = {Path(m.name).parts[0] for m in tar if m.name and not m.name.startswith("/")}
    except (tarfile.TarError, EOFError) as exc:
        raise CorruptArchive(f"{container.member} (container {container.name!r}) is not a readable tar: {exc}") from exc
    missing = [name for name in archive.REQUIRED_MEMBERS if name not in tops]
    if missing:
        raise CorruptArchive(f"{container.member} (container {container.name!r}) lacks {', '.join(missing)}")
