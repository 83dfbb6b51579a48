"""Start, stop, remove and exit bookkeeping of workload containers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import signal
from pathlib import Path

from crishim.cri_api import api_pb2
from crishim.oci import conmon
from crishim.oci.errors import OciError
from crishim.runtime import rootfs as rootfs_mount
from crishim.runtime.checkpoint import late_pages, memstage
from crishim.runtime.container import launch as launching
from crishim.runtime.container import volumes
from crishim.runtime.errors import FailedPrecondition, Internal, NotFound
from crishim.runtime.events import DELETED, STARTED, STOPPED, ContainerEvent
from crishim.runtime.ids import now_ns
from crishim.runtime.mounts import unmount
from crishim.runtime.nri import nri_pb2
from crishim.runtime.nri import steps as nri_steps
from crishim.runtime.services import Handler, Services
from crishim.runtime.state.records import (
    CONTAINER_CREATED,
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    Container,
    ContainerMeta,
    ContainerStatus,
)

log = logging.getLogger("crishim.container")

START_FAILED_EXIT_CODE = 128


def exit_reason(code: int, oom: bool) -> str:
    if oom:
        return "OOMKilled"
    return "Completed" if code == 0 else "Error"


async def start_container(svc: Services, container_id: str) -> None:
    containers = svc.state.containers
    async with svc.locks.hold(container_id):
        record = containers.get(container_id)
        meta = record.meta
        if record.status.state != CONTAINER_CREATED:
            raise FailedPrecondition(
                f"container {container_id} is {record.status.state}, not CREATED: "
                "only a created container can be started"
            )
        handler = svc.handler(meta.runtime_handler)
        if record.status.restore_pending:  # made from a checkpoint: CRIU brings its process back
            # Imported here: the restore code and its archive reader stay out of an idle daemon.
            from crishim.runtime.checkpoint.restore_start import restore_container

            started = await restore_container(svc, handler, record)
        else:
            started = await _start(svc, handler, container_id)
        exited_meanwhile = started.status.state == CONTAINER_EXITED
        if exited_meanwhile:
            # It exited while `runc start` ran; record_exit left the delete to us.
            await launching.delete_quietly(handler, container_id)
    svc.events.publish(ContainerEvent(container_id, meta.sandbox_id, STARTED, started.status.started_at))
    await nri_steps.container_event(svc, nri_pb2.POST_START_CONTAINER, container_id)
    if exited_meanwhile:  # an exit seen while `runc start` ran comes after STARTED
        await _tell_stopped(svc, started)


async def _start(svc: Services, handler: Handler, container_id: str) -> Container:
    """`runc start` of a created container; its record once started (or exited meanwhile)."""
    containers = svc.state.containers
    meta = containers.get(container_id).meta
    svc.monitor.watch(container_id, meta.conmon_pid)
    # Taken before `runc start`: a process that exits at once must not finish before it started.
    started_at = now_ns()
    containers.update_status(container_id, lambda s: dataclasses.replace(s, starting=True))
    try:
        await nri_steps.container_event(svc, nri_pb2.START_CONTAINER, container_id)
        await handler.runtime.start(container_id)
    except Exception as exc:
        ended = containers.update_status(container_id, lambda s: dataclasses.replace(s, starting=False))
        if ended.status.state == CONTAINER_EXITED:
            await _tell_stopped(svc, ended)  # record_exit left it to us
        # The process never ran: record why, as CRI-O and containerd do, and clean up runc.
        message = str(exc)[:4096]
        await launching.kill_and_delete(svc, handler, container_id)
        containers.update_status(
            container_id,
            lambda s: dataclasses.replace(
                s,
                state=CONTAINER_EXITED,
                started_at=s.started_at or now_ns(),
                finished_at=now_ns(),
                exit_code=START_FAILED_EXIT_CODE,
                reason="StartError",
                message=message,
            ),
        )
        raise
    started = containers.update_status(
        container_id,
        lambda s: dataclasses.replace(
            s,
            starting=False,
            state=CONTAINER_RUNNING if s.state == CONTAINER_CREATED else s.state,
            started_at=started_at,
        ),
    )
    return started


async def _tell_stopped(svc: Services, record: Container) -> None:
    """Subscribers and NRI plugins hear of an exit (whether StopContainer or the process ended it)."""
    svc.events.publish(ContainerEvent(record.meta.id, record.meta.sandbox_id, STOPPED, record.status.finished_at))
    await nri_steps.container_event(svc, nri_pb2.STOP_CONTAINER, record.meta.id)


async def record_exit(svc: Services, container_id: str) -> None:
    """Called when conmon exits: the exit file holds the code, conmon's oom file the reason."""
    try:
        record = svc.state.containers.get(container_id)
    except NotFound:
        return
    if record.status.state == CONTAINER_EXITED:
        return
    meta = record.meta
    result = conmon.read_exit(svc.config.exits_dir, container_id)
    oom = await launching.oom_killed(svc, meta)
    if result is None:
        code, finished = (137 if oom else 255), now_ns()
        message = "" if oom else "container monitor exited without recording an exit code"
    else:
        (code, finished), message = result, ""
    reason = exit_reason(code, oom)
    recorded_meanwhile = False

    def exited(s: ContainerStatus) -> ContainerStatus:
        nonlocal recorded_meanwhile
        if s.state == CONTAINER_EXITED:
            # Another record_exit ran while this one read the OOM evidence: keep its record.
            recorded_meanwhile = True
            return s
        return dataclasses.replace(
            s,
            state=CONTAINER_EXITED,
            exit_code=code,
            finished_at=max(finished, s.started_at),
            reason=reason,
            message=s.message or message,
            started_at=s.started_at or finished,
        )

    updated = svc.state.containers.update_status(container_id, exited)
    if recorded_meanwhile:
        return
    log.info("container %s exited with %d (%s)", container_id[:13], code, reason)
    if updated.status.starting:
        return  # start_container publishes STOPPED after STARTED, then deletes the runc state
    # Subscribers (the evented PLEG) hear of the exit before the clean-up below.
    await _tell_stopped(svc, updated)
    # The runc state of an exited container is of no more use; delete frees its cgroup.
    await launching.delete_quietly(svc.handler(meta.runtime_handler), container_id)


def stop_signal(svc: Services, meta: ContainerMeta) -> int:
    """CRI stop_signal, else the image's StopSignal, else SIGTERM."""
    config = api_pb2.ContainerConfig.FromString(meta.config)
    if config.stop_signal:
        name = api_pb2.Signal.Name(config.stop_signal).removeprefix("SIGNAL_")
        if name != "RUNTIME_DEFAULT":
            return _signal_number(name)
    try:
        # config() answers for an image in use even after RemoveImage untagged it.
        image_signal = (svc.images.config(meta.image_id).get("config") or {}).get("StopSignal")
    except Exception:  # noqa: BLE001 - no config at all: fall back to SIGTERM
        image_signal = None
    if image_signal:
        return _signal_number(str(image_signal))
    return int(signal.SIGTERM)


def _signal_number(name: str) -> int:
    name = name.upper()
    if name.isdigit():
        return int(name)
    if name.startswith("SIGRTMINPLUS"):
        return int(signal.SIGRTMIN) + int(name.removeprefix("SIGRTMINPLUS"))
    if name.startswith("SIGRTMAXMINUS"):
        return int(signal.SIGRTMAX) - int(name.removeprefix("SIGRTMAXMINUS"))
    if not name.startswith("SIG"):
        name = "SIG" + name
    aliases = {"SIGCLD": "SIGCHLD", "SIGPOLL": "SIGIO", "SIGIOT": "SIGABRT"}
    name = aliases.get(name, name)
    return int(getattr(signal, name, signal.SIGTERM))


async def stop_container(svc: Services, container_id: str, grace_seconds: int) -> None:
    """Signal, wait up to `grace_seconds`, then SIGKILL; stopping a stopped container succeeds."""
    record = svc.state.containers.get(container_id)
    meta = record.meta
    if record.status.state != CONTAINER_RUNNING:
        if record.status.state == CONTAINER_CREATED:
            await _stop_created(svc, meta)
        return
    handler = svc.handler(meta.runtime_handler)
    svc.monitor.watch(container_id, meta.conmon_pid)
    if grace_seconds > 0:
        await launching.signal_quietly(handler, container_id, stop_signal(svc, meta))
        if await svc.monitor.wait(container_id, float(grace_seconds)):
            return
    await launching.signal_quietly(handler, container_id, int(signal.SIGKILL))
    if not await svc.monitor.wait(container_id, 30.0):
        log.warning("container %s did not exit 30s after SIGKILL", container_id[:13])


async def _stop_created(svc: Services, meta: ContainerMeta) -> None:
    """A created, never started container: kill its init and record the exit."""
    handler = svc.handler(meta.runtime_handler)
    svc.monitor.watch(meta.id, meta.conmon_pid)
    await launching.signal_quietly(handler, meta.id, int(signal.SIGKILL))
    await svc.monitor.wait(meta.id, 10.0)


async def remove_container(svc: Services, container_id: str) -> None:
    """Kills it if running, deletes runc state, unmounts, removes files; absent is not an error."""
    try:
        record = svc.state.containers.get(container_id)
    except NotFound:
        return  # api.proto: RemoveContainer must not error for a removed container
    meta = record.meta
    async with svc.locks.hold(container_id):
        handler = svc.handler(meta.runtime_handler)
        try:
            if record.status.state in (CONTAINER_RUNNING, CONTAINER_CREATED):
                await stop_container(svc, container_id, 0)
                await launching.kill_and_delete(svc, handler, container_id, strict=True)
            else:
                # Exited: nothing to kill; the delete is normally done already (record_exit).
                await launching.delete_state(handler, container_id)
        except OciError as exc:
            # The record stays while runc state (and its cgroup) does, so a retry finds it.
            raise Internal(
                f"container {container_id}: {handler.name} could not delete its state, so it is kept; "
                f"RemoveContainer can be retried: {exc}"
            ) from exc
        # The record goes before the files: a crash in between leaves files no record names,
        # which the start-up sweep removes, never a listed container whose files are gone.
        final = svc.state.containers.get(container_id)
        svc.state.containers.delete(container_id)
        await release_container_files(svc, meta)
    svc.events.publish(ContainerEvent(container_id, meta.sandbox_id, DELETED, now_ns()))
    await nri_steps.container_removed(svc, final)
    log.info("container %s removed", container_id[:13])


async def release_container_files(svc: Services, meta: ContainerMeta) -> None:
    """Unmounts and removes what the container held."""
    for volume in meta.image_volumes:
        await asyncio.to_thread(volumes.unmount_image_volume, svc, Path(volume))
    await asyncio.to_thread(unmount, Path(meta.rootfs))
    await asyncio.to_thread(rootfs_mount.unmount_idmapped_layers, Path(meta.bundle) / "idmapped")
    await svc.images.arelease(f"container:{meta.id}")
    # The page images' copy behind a restore's create, if it still runs: its files closed first.
    await asyncio.to_thread(late_pages.cancel, Path(meta.bundle))
    # CRIU images bound from memory: a restore never started, one that failed or was cut short
    # by a kill -9, or one whose images the background release has not dropped yet.
    await asyncio.to_thread(memstage.release_bundle_images, Path(meta.bundle))
    await asyncio.to_thread(shutil.rmtree, meta.bundle, True)
    await asyncio.to_thread(conmon.remove_leftovers, svc.config.exits_dir, svc.config.attach_dir, meta.id)
