"""CheckpointContainer (KEP-2008): a running container's CRIU images and writable layer, in one archive.

    location checked -> RUNNING? -> handler can? -> CRIU can? -> pause
      -> runc checkpoint --leave-running -> rootfs diff -> resume -> archive -> rename onto location
                 (its page image copied into the archive meanwhile: follow.py)

The container is paused (cgroup freezer) from before CRIU until the writable
layer is read, as CRI-O does, so the process images and the files agree; CRIU
finds the cgroup frozen and leaves it so. Whatever happens after the pause,
the container is resumed, and CRIU's staging directory (in the container's own
directory, beside its bundle) is removed. `timeout` bounds the whole call: an
overrunning CRIU is killed and collected (oci/checkpoint.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

from crishim.oci import checkpoint as oci_checkpoint
from crishim.oci.errors import OciError
from crishim.runtime.bundle import read_runtime_spec
from crishim.runtime.checkpoint import archive, freeze, memstage, provenance
from crishim.runtime.checkpoint.availability import require_criu
from crishim.runtime.checkpoint.follow import PageFollower
from crishim.runtime.checkpoint.location import checked_location
from crishim.runtime.checkpoint.phases import LOG_PREFIX, Phases
from crishim.runtime.checkpoint.stage import STAGE_PREFIX, discard_stage, record_partial, remove_stage
from crishim.runtime.errors import DeadlineExceeded, FailedPrecondition, Internal, ResourceExhausted
from crishim.runtime.ids import now_ns
from crishim.runtime.services import Handler, Services
from crishim.runtime.state.records import CONTAINER_RUNNING, Container

log = logging.getLogger("crishim.checkpoint")

# api.proto: a timeout of zero means the runtime's default.
DEFAULT_TIMEOUT_SECONDS = 300


async def checkpoint_container(svc: Services, container_id: str, location: str, timeout_seconds: int) -> None:
    target = checked_location(location)
    seconds = timeout_seconds if timeout_seconds > 0 else DEFAULT_TIMEOUT_SECONDS
    await checkpoint_to(svc, container_id, target, seconds)
    log.info("checkpointed container %s to %s", container_id, target)


async def checkpoint_to(svc: Services, container_id: str, target: Path, seconds: int) -> None:
    """One container's archive at `target` (a checked path), within `seconds`, or no archive at all.

    CheckpointContainer writes it where the caller named; CheckpointPod (pod.py) into its
    staging directory, one archive per container of the pod.
    """
    async with svc.locks.hold(container_id):
        record = svc.state.containers.get(container_id)
        if record.status.state != CONTAINER_RUNNING:
            raise FailedPrecondition(
                f"container {container_id} is {record.status.state}, not RUNNING: only a running container "
                "can be checkpointed"
            )
        handler = svc.handler(record.meta.runtime_handler)
        await require_criu(handler.runtime, handler.name, "checkpoint", "checkpoint")
        try:
            async with asyncio.timeout(seconds):
                await _checkpoint(svc, handler, record, target, seconds)
        except TimeoutError:
            raise DeadlineExceeded(
                f"checkpoint of container {container_id} did not finish within {seconds}s; "
                "CRIU was stopped, the container left running and no archive written"
            ) from None


async def _checkpoint(svc: Services, handler: Handler, record: Container, target: Path, seconds: float) -> None:
    meta = record.meta
    bundle = Path(meta.bundle)
    spec = read_runtime_spec(bundle)
    if spec is None:
        raise FailedPrecondition(f"container {meta.id} has no runtime spec in {bundle}: it is being removed")
    phases = Phases()
    stage = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=STAGE_PREFIX, dir=bundle))
    abort = threading.Event()  # tells a writer thread that its caller has gone
    partial: Path | None = None
    try:
        paths = oci_checkpoint.CheckpointPaths(images=stage / archive.CHECKPOINT_DIRECTORY, work=stage)
        paths.images.mkdir(mode=0o700)
        await asyncio.to_thread(memstage.stage_in_memory, paths.images, meta.pid)
        partial = archive.partial_path(target, stage.name)
        await asyncio.to_thread(record_partial, stage, partial)  # for a restart after kill -9 to remove it
        follower = PageFollower(paths.images, partial, abort)
        await asyncio.to_thread(follower.start)
        try:
            checkpointed_at = now_ns()
            deleted = await _dump_paused(svc, handler, record, spec, paths, seconds, abort, phases)
            followed = await asyncio.to_thread(follower.finish)
        finally:
            await asyncio.shield(asyncio.to_thread(follower.stop))
        phases.mark("page image's tail")
        origin = (await provenance.this_node()).as_dict()
        members = _members(svc, record, spec, stage, deleted, checkpointed_at, origin)
        phases.mark("metadata")
        await asyncio.to_thread(archive.write_archive, target, members, abort, partial, followed)
        phases.mark("archive")
        await asyncio.shield(asyncio.to_thread(discard_stage, stage))  # its removal goes on behind the call
    except OSError as exc:
        # The node's disk (full, read-only, removed under us): say which file, not only errno.
        error = ResourceExhausted if exc.errno in (errno.ENOSPC, errno.EDQUOT) else Internal
        raise error(f"checkpoint of container {meta.id} to {target}: {exc}") from exc
    finally:
        abort.set()
        if partial is not None:  # a failure before write_archive leaves the follower's partial file
            await asyncio.shield(asyncio.to_thread(partial.unlink, missing_ok=True))
        await asyncio.shield(asyncio.to_thread(remove_stage, stage))  # a failed one's, at once
    phases.mark("stage discarded")
    log.info("%s checkpoint of %s: %s", LOG_PREFIX, meta.id[:13], phases.summary())


async def _dump_paused(
    svc: Services,
    handler: Handler,
    record: Container,
    spec: dict[str, object],
    paths: oci_checkpoint.CheckpointPaths,
    seconds: float,
    abort: threading.Event,
    phases: Phases,
) -> list[str]:
    """CRIU's images and the rootfs diff, taken while the container is frozen; deleted.files' paths."""
    meta, runtime = record.meta, handler.runtime
    cgroup = await asyncio.to_thread(freeze.v2_cgroup_dir, meta.cgroups_path, svc.cgroup_driver)
    await freeze.pause(runtime, meta.id, cgroup)
    phases.mark("pause")
    try:
        await oci_checkpoint.checkpoint(runtime, meta.id, paths, time_limit=seconds)
        phases.mark("runc checkpoint")
        deleted = await asyncio.to_thread(
            archive.write_rootfs_diff,
            Path(meta.bundle) / "upper",
            paths.work / archive.ROOTFS_DIFF,
            _image_layers(svc, meta.image_id),
            _mount_points(spec),
            abort,
        )
        phases.mark("rootfs diff")
        return deleted
    finally:
        # Shielded: a call cancelled mid-dump must still not leave the container frozen.
        try:
            await asyncio.shield(freeze.resume(runtime, meta.id, cgroup))
        except (OciError, OSError) as exc:  # it exited meanwhile: nothing to resume
            log.warning("resuming container %s after its checkpoint: %s", meta.id, exc)
        phases.mark("resume")


def _image_layers(svc: Services, image_id: str) -> list[Path]:
    try:
        layers: list[Path] = svc.images.layer_paths(image_id)
    except Exception as exc:  # noqa: BLE001 - only the opaque directories' deletions depend on it
        log.warning("image %s layers unknown for the rootfs diff: %s", image_id, exc)
        return []
    return layers


def _mount_points(spec: dict[str, object]) -> frozenset[str]:
    mounts = spec.get("mounts", [])
    if not isinstance(mounts, list):
        return frozenset()
    points = (str(m.get("destination", "")).strip("/") for m in mounts if isinstance(m, dict))
    return frozenset(p for p in points if p)


def _members(
    svc: Services,
    record: Container,
    spec: dict[str, object],
    stage: Path,
    deleted: list[str],
    at: int,
    origin: dict[str, Any],
) -> list[archive.Member]:
    meta = record.meta
    sandbox = svc.state.sandboxes.get(meta.sandbox_id).meta
    info = archive.ContainerInfo(
        id=meta.id,
        name=meta.name,
        image=meta.image,
        image_id=meta.image_id,
        image_ref=meta.image_ref,
        runtime_handler=meta.runtime_handler or svc.default_handler,
        created_at_ns=meta.created_at,
    )
    cri_names = {
        archive.CRI_CONTAINER_NAME: meta.name,
        archive.CRI_SANDBOX_NAME: sandbox.name,
        archive.CRI_SANDBOX_NAMESPACE: sandbox.namespace,
        archive.CRI_SANDBOX_ID: sandbox.id,
    }
    members = [
        archive.Member(archive.CHECKPOINT_DIRECTORY, path=stage / archive.CHECKPOINT_DIRECTORY),
        archive.Member(archive.CONFIG_DUMP, data=archive.config_dump(info, at, origin)),
        archive.Member(archive.SPEC_DUMP, data=archive.spec_dump(spec, cri_names)),
        archive.Member(archive.ROOTFS_DIFF, path=stage / archive.ROOTFS_DIFF),
        archive.Member(archive.DELETED_FILES, data=archive.deleted_files(deleted)),
    ]
    log_path = Path(meta.log_path) if meta.log_path else Path(meta.bundle) / "container.log"
    optional = [(archive.CONTAINER_LOG, log_path), (archive.STATS_DUMP, stage / archive.STATS_DUMP),
                (archive.DUMP_LOG, stage / archive.DUMP_LOG)]  # fmt: skip
    members += [archive.Member(name, path=path) for name, path in optional if path.is_file()]
    return members
