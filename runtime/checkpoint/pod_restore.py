"""RestorePod: a new pod from a CheckpointPod archive, its containers restored and running.

    options empty? checkpoint_path absolute? (INVALID_ARGUMENT) -> a file? (NOT_FOUND)
      -> unpack and check the pod archive (pod_archive.py: INVALID_ARGUMENT)
      -> taken where this node can restore it? (provenance.py: FAILED_PRECONDITION)
      -> container_configs each name an archived container? (INVALID_ARGUMENT)
      -> RunPodSandbox's path -> each container: CreateContainer from its archive
         (restore.py) and StartContainer (restore_start.py), in checkpoint order

Neither containerd nor CRI-O implements this RPC, so its meaning is crishim's:

- `config` absent: the archived PodSandboxConfig, as a NEW pod. The original
  usually still runs (CheckpointPod leaves it running), and a kubelet keys its
  pods by UID: a copy with the same UID and the next attempt would be taken for
  the original's newer sandbox and the original stopped. So the copy gets a
  fresh UID (also in the io.kubernetes.pod.uid label, where the kubelet reads
  it), and its log directory moves with it: the old UID replaced in the path
  (the kubelet's /var/log/pods/<ns>_<name>_<uid>), or else a sibling directory
  named after the new UID, so the two pods never write one log file.
  `config` given: used as it is (the kubelet's own pod).
- `runtime_handler` empty: the archived pod's handler.
- `container_configs`: a config whose metadata.name names an archived container
  replaces that container's archived config (its image is ignored: the container
  comes from its archive); one naming no archived container is INVALID_ARGUMENT.
  Without one, the archived config is used, its pod UID label set to the new pod's.
- `options`: none are known; any key is INVALID_ARGUMENT naming it.

Every check on the archive comes before the pod exists. After, a failure
(a base image not pulled, CRIU failing to restore) removes all that was made
(the containers, the sandbox, its netns) and answers with that failure's code.
The unpacked archive is staged beside the containers' directories and removed
whatever happens (after a kill -9, by the start-up sweep, orphans.py). Once the
pod exists the stage names it, so a daemon killed mid-restore removes at start-up
the pod the call never answered with (stage.interrupted_pod_restores, recover.py),
as a killed RunPodSandbox leaves no pod.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from crishim.cri_api import api_pb2
from crishim.runtime.checkpoint import archive, pod_archive, provenance
from crishim.runtime.checkpoint.stage import RESTORE_POD_PREFIX, record_restored_pod
from crishim.runtime.container import lifecycle
from crishim.runtime.container.create import create_container
from crishim.runtime.errors import InvalidArgument, NotFound
from crishim.runtime.ids import new_id
from crishim.runtime.sandbox import lifecycle as pods
from crishim.runtime.sandbox.run import run_pod_sandbox
from crishim.runtime.services import Services
from google.protobuf import json_format

log = logging.getLogger("crishim.checkpoint")

FIELD = "checkpoint_path"
POD_UID_LABEL = "io.kubernetes.pod.uid"


@dataclass(frozen=True, slots=True)
class RestoredPod:
    sandbox_id: str
    containers: list[tuple[str, str]]  # (name, new container ID), in restore order


async def restore_pod(svc: Services, request: api_pb2.RestorePodRequest) -> RestoredPod:
    if request.options:
        keys = ", ".join(repr(k) for k in sorted(request.options))
        raise InvalidArgument(f"options {keys} are not known: RestorePod takes none")
    path = await _archive_path(request.checkpoint_path)
    overrides = _overrides(request.container_configs)
    stage = svc.container_dir(f"{RESTORE_POD_PREFIX}{new_id()}")
    await asyncio.to_thread(stage.mkdir, mode=0o700, parents=True)
    abort = threading.Event()  # a cancelled call stops the unpacking thread
    try:
        unpacked = await _unpack(path, stage, abort)
        dump = unpacked.dump
        node = await provenance.this_node()
        provenance.check_restorable({provenance.KEY: dump.origin}, node, str(path))
        unknown = sorted(set(overrides) - {c.name for c in dump.containers})
        if unknown:
            raise InvalidArgument(
                f"container_configs name {', '.join(map(repr, unknown))}, which checkpoint {str(path)!r} does not "
                f"hold (it holds {', '.join(repr(c.name) for c in dump.containers)})"
            )
        pod_config = request.config if request.HasField("config") else fresh_pod_config(_pod_config(dump))
        configs = [
            (c, overrides.get(c.name) or _archived_container_config(c, pod_config.metadata.uid))
            for c in dump.containers
        ]
        handler = request.runtime_handler or dump.runtime_handler
        return await _restore(svc, stage, unpacked, pod_config, handler, configs)
    finally:
        abort.set()
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, stage, True))


async def _archive_path(raw: str) -> Path:
    if not raw:
        raise InvalidArgument(f"{FIELD} is empty: name the pod checkpoint archive to restore")
    if not raw.startswith("/") or "\x00" in raw:
        raise InvalidArgument(f"{FIELD} {raw!r} must be an absolute file path")
    path = Path(raw)
    if not await asyncio.to_thread(path.is_file):
        raise NotFound(f"{FIELD}: pod checkpoint archive {raw!r} does not exist (or is not a file)")
    return path


def _overrides(configs: list[api_pb2.ContainerConfig]) -> dict[str, api_pb2.ContainerConfig]:
    found: dict[str, api_pb2.ContainerConfig] = {}
    for i, config in enumerate(configs):
        name = config.metadata.name
        if not name:
            raise InvalidArgument(f"container_configs[{i}].metadata.name is empty: name the container it replaces")
        if name in found:
            raise InvalidArgument(f"container_configs name {name!r} more than once")
        found[name] = config
    return found


async def _unpack(path: Path, stage: Path, abort: threading.Event) -> pod_archive.UnpackedPod:
    try:
        return await asyncio.to_thread(pod_archive.unpack_pod_archive, path, stage, abort)
    except archive.CorruptArchive as exc:
        raise InvalidArgument(f"{FIELD}: {str(path)!r} is not a usable pod checkpoint archive: {exc}") from None


def _pod_config(dump: pod_archive.PodDump) -> api_pb2.PodSandboxConfig:
    try:
        config: api_pb2.PodSandboxConfig = json_format.ParseDict(dump.config, api_pb2.PodSandboxConfig())
    except json_format.ParseError as exc:
        raise InvalidArgument(f"{FIELD}: the archived pod config does not parse: {exc}") from None
    return config


def fresh_pod_config(archived: api_pb2.PodSandboxConfig) -> api_pb2.PodSandboxConfig:
    """The archived pod as a new pod: a fresh UID (in the label too), a log directory of its own."""
    config = api_pb2.PodSandboxConfig()
    config.CopyFrom(archived)
    old_uid, new_uid = archived.metadata.uid, str(uuid.uuid4())
    config.metadata.uid = new_uid
    if config.labels.get(POD_UID_LABEL) == old_uid:
        config.labels[POD_UID_LABEL] = new_uid
    if config.log_directory:
        directory = config.log_directory.rstrip("/")
        if old_uid and old_uid in directory:
            config.log_directory = directory.replace(old_uid, new_uid)
        else:
            config.log_directory = f"{directory}-{new_uid}"
    return config


def _archived_container_config(container: pod_archive.ArchivedContainer, pod_uid: str) -> api_pb2.ContainerConfig:
    try:
        config: api_pb2.ContainerConfig = json_format.ParseDict(container.config, api_pb2.ContainerConfig())
    except json_format.ParseError as exc:
        raise InvalidArgument(
            f"{FIELD}: the archived config of container {container.name!r} does not parse: {exc}"
        ) from None
    if POD_UID_LABEL in config.labels:
        config.labels[POD_UID_LABEL] = pod_uid
    return config


async def _restore(
    svc: Services,
    stage: Path,
    unpacked: pod_archive.UnpackedPod,
    pod_config: api_pb2.PodSandboxConfig,
    handler: str,
    configs: list[tuple[pod_archive.ArchivedContainer, api_pb2.ContainerConfig]],
) -> RestoredPod:
    # The RPCs' own flows: what RunPodSandbox, CreateContainer and StartContainer check, checked here too.
    sandbox_id = await run_pod_sandbox(svc, pod_config, handler)
    restored: list[tuple[str, str]] = []
    try:
        await asyncio.to_thread(record_restored_pod, stage, sandbox_id)
        for container, given in configs:
            config = api_pb2.ContainerConfig()
            config.CopyFrom(given)
            config.image.image = str(unpacked.container_archive(container))  # an archive: restore.py
            container_id = await create_container(svc, sandbox_id, config, pod_config)
            restored.append((container.name, container_id))
            await lifecycle.start_container(svc, container_id)
    except BaseException as exc:
        log.warning("restore of pod %s failed, removing what was made: %s", sandbox_id[:13], exc)
        await asyncio.shield(_remove(svc, sandbox_id))
        raise
    log.info("restored pod %s with %d containers", sandbox_id[:13], len(restored))
    return RestoredPod(sandbox_id, restored)


async def _remove(svc: Services, sandbox_id: str) -> None:
    try:
        await pods.stop_pod_sandbox(svc, sandbox_id)
        await pods.remove_pod_sandbox(svc, sandbox_id)
    except Exception:  # the first failure is the answer; this one is logged
        log.exception("removing pod %s after its failed restore", sandbox_id[:13])
