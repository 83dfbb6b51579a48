"""CheckpointPod: the pod's config and its running containers' checkpoints, in one archive.

    output_path checked (INVALID_ARGUMENT) -> options known? (INVALID_ARGUMENT)
      -> pod READY? (FAILED_PRECONDITION) -> containers chosen, each in the pod and RUNNING
      -> handler can? CRIU can? -> each container: flow.checkpoint_to into the pod's stage
      -> pod.dump -> the pod archive (pod_archive.py) -> rename onto output_path

Neither containerd nor CRI-O implements this RPC, so its meaning is crishim's:

- `container_ids` empty means every RUNNING container of the pod; a listed ID
  must be a container of this pod (another pod's is INVALID_ARGUMENT, an
  unknown one NOT_FOUND) and RUNNING (FAILED_PRECONDITION). A pod with nothing
  running has nothing to checkpoint: FAILED_PRECONDITION.
- Each container is checkpointed as CheckpointContainer does it (paused, dumped
  with --leave-running, resumed), one after the other: each container's memory
  and files agree with each other, but the containers are not frozen at one
  instant together. Every container keeps running.
- `options`: "timeout" (seconds, a positive integer) bounds the whole call, as
  CheckpointContainer's `timeout` does (default 300 s); any other key is
  refused with INVALID_ARGUMENT naming it, so a caller never believes an
  option was honoured.

The pod's lock is held throughout, so the pod cannot be stopped, removed or
given a container halfway. The container archives are staged in the pod's own
directory; the pod archive is written to a hidden file beside `output_path` and
renamed onto it, so on any failure or timeout no archive (whole or half) is
left and the staging goes. A daemon killed mid-way leaves both to
stage.collect_interrupted, which removes them at start-up.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crishim.cri_api import api_pb2
from crishim.runtime.checkpoint import archive, pod_archive, provenance
from crishim.runtime.checkpoint.availability import require_criu
from crishim.runtime.checkpoint.flow import DEFAULT_TIMEOUT_SECONDS, checkpoint_to
from crishim.runtime.checkpoint.location import checked_location
from crishim.runtime.checkpoint.stage import STAGE_PREFIX, discard_stage, record_partial
from crishim.runtime.errors import DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, ResourceExhausted
from crishim.runtime.ids import now_ns
from crishim.runtime.services import Services
from crishim.runtime.state.records import CONTAINER_RUNNING, SANDBOX_READY, Container, Sandbox
from google.protobuf import json_format

log = logging.getLogger("crishim.checkpoint")

FIELD = "output_path"
TIMEOUT_OPTION = "timeout"


async def checkpoint_pod(
    svc: Services, sandbox_id: str, output_path: str, container_ids: list[str], options: Mapping[str, str]
) -> None:
    target = checked_location(output_path, FIELD)
    seconds = timeout_option(options)
    async with svc.locks.hold("sandbox:" + sandbox_id):
        sandbox = svc.state.sandboxes.get(sandbox_id)
        if sandbox.status.state != SANDBOX_READY:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} is not ready: only a ready pod can be checkpointed")
        containers = chosen_containers(svc, sandbox_id, container_ids)
        handler = svc.handler(sandbox.meta.runtime_handler)
        await require_criu(handler.runtime, handler.name, "checkpoint", "checkpoint")
        try:
            async with asyncio.timeout(seconds):
                await _checkpoint(svc, sandbox, containers, target, seconds)
        except TimeoutError:
            raise DeadlineExceeded(
                f"checkpoint of pod sandbox {sandbox_id} did not finish within {seconds}s; "
                "its containers were left running and no archive written"
            ) from None
    log.info("checkpointed pod %s (%d containers) to %s", sandbox_id, len(containers), target)


def timeout_option(options: Mapping[str, str]) -> int:
    unknown = sorted(set(options) - {TIMEOUT_OPTION})
    if unknown:
        raise InvalidArgument(
            f"options {', '.join(repr(k) for k in unknown)} are not known: CheckpointPod takes only {TIMEOUT_OPTION!r}"
        )
    raw = options.get(TIMEOUT_OPTION, "")
    if not raw:
        return DEFAULT_TIMEOUT_SECONDS
    if not raw.isdigit() or int(raw) <= 0:
        raise InvalidArgument(f"options[{TIMEOUT_OPTION!r}] {raw!r} must be a positive number of seconds")
    return int(raw)


def chosen_containers(svc: Services, sandbox_id: str, wanted: list[str]) -> list[Container]:
    """The containers to checkpoint, in creation order: those listed, or every running one."""
    if not wanted:
        running = [c for c in svc.state.containers.in_sandbox(sandbox_id) if c.status.state == CONTAINER_RUNNING]
        if not running:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} has no running container to checkpoint")
        return _in_order(running)
    chosen: dict[str, Container] = {}
    for raw in wanted:
        if not raw:
            raise InvalidArgument("container_ids lists an empty ID")
        record = svc.state.containers.get(svc.resolve_container_id(raw))
        if record.meta.sandbox_id != sandbox_id:
            raise InvalidArgument(
                f"container_ids: container {record.meta.id} is in pod sandbox {record.meta.sandbox_id}, "
                f"not in {sandbox_id}"
            )
        if record.status.state != CONTAINER_RUNNING:
            raise FailedPrecondition(
                f"container {record.meta.id} is {record.status.state}, not RUNNING: only a running container "
                "can be checkpointed"
            )
        chosen[record.meta.id] = record
    records = _in_order(list(chosen.values()))
    names = [c.meta.name for c in records]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidArgument(
            f"container_ids: more than one container is named {', '.join(twice)}: a restore tells them apart "
            "by name, so list one of each"
        )
    return records


def _in_order(records: list[Container]) -> list[Container]:
    return sorted(records, key=lambda c: (c.meta.created_at, c.meta.id))


async def _checkpoint(svc: Services, sandbox: Sandbox, containers: list[Container], target: Path, seconds: int) -> None:
    meta = sandbox.meta
    bundle = Path(meta.bundle)
    stage = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=STAGE_PREFIX, dir=bundle))
    abort = threading.Event()  # tells the writer thread that its caller has gone
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        archived = []
        for record in containers:
            left = max(1, math.ceil(deadline - asyncio.get_running_loop().time()))
            await checkpoint_to(svc, record.meta.id, stage / f"{record.meta.id}.tar", left)
            config = api_pb2.ContainerConfig.FromString(record.meta.config)
            member = pod_archive.container_member(record.meta.id)
            archived.append(pod_archive.ArchivedContainer(record.meta.name, record.meta.id, member, _json(config)))
        dump = pod_archive.PodDump(
            sandbox_id=meta.id,
            runtime_handler=meta.runtime_handler or svc.default_handler,
            config=_json(api_pb2.PodSandboxConfig.FromString(meta.config)),
            containers=archived,
            origin=(await provenance.this_node()).as_dict(),
            checkpointed_at_ns=now_ns(),
        )
        members = [archive.Member(pod_archive.POD_DUMP, data=pod_archive.pod_dump(dump))]
        members += [archive.Member(c.member, path=stage / f"{c.id}.tar") for c in archived]
        partial = archive.partial_path(target, stage.name)
        await asyncio.to_thread(record_partial, stage, partial)  # for a restart after kill -9 to remove it
        await asyncio.to_thread(archive.write_archive, target, members, abort, partial)
        await asyncio.shield(asyncio.to_thread(discard_stage, stage))  # its removal goes on behind the call
    except OSError as exc:
        error = ResourceExhausted if exc.errno in (errno.ENOSPC, errno.EDQUOT) else Internal
        raise error(f"checkpoint of pod sandbox {meta.id} to {target}: {exc}") from exc
    finally:
        abort.set()
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, stage, True))


def _json(message: api_pb2.ContainerConfig | api_pb2.PodSandboxConfig) -> dict[str, Any]:
    value: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return value
