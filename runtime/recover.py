"""Start-up reconcile: the SQLite records against what really runs.

After a crash (kill -9 included) containers kept running under their conmon;
exits that happened while the daemon was down are in conmon's exit files.
Nothing the kubelet saw before may change, except those exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

from crishim.oci import conmon
from crishim.runtime.container import lifecycle
from crishim.runtime.errors import NotFound
from crishim.runtime.sandbox import pidholder
from crishim.runtime.sandbox.pinned import all_pinned
from crishim.runtime.services import Services
from crishim.runtime.state.records import (
    CONTAINER_CREATED,
    CONTAINER_RUNNING,
    SANDBOX_NOTREADY,
    SANDBOX_READY,
)

log = logging.getLogger("crishim.recover")


async def on_object_exit(svc: Services, object_id: str) -> None:
    """Exit of a conmon: a workload container's exit, or the pod's infra container (or PID
    namespace holder) dying."""
    try:
        svc.state.containers.get(object_id)
    except NotFound:
        try:
            sandbox = svc.state.sandboxes.get(object_id)
        except NotFound:
            return
        if sandbox.status.state == SANDBOX_READY:
            stopping = svc.locks.held("sandbox:" + object_id)
            log.log(
                logging.INFO if stopping else logging.WARNING,
                "infra container of sandbox %s exited; the sandbox is NOTREADY",
                object_id[:13],
            )
            _mark_not_ready(svc, object_id)
        return
    await lifecycle.record_exit(svc, object_id)


def _mark_not_ready(svc: Services, sandbox_id: str) -> None:
    svc.state.sandboxes.update_status(sandbox_id, lambda s: dataclasses.replace(s, state=SANDBOX_NOTREADY))


async def reconcile(svc: Services) -> None:
    from crishim.runtime.checkpoint.stage import collect_interrupted, interrupted_pod_restores
    from crishim.runtime.orphans import collect_orphans

    # Read before the sweep below removes the stages that name them.
    unanswered_pods = await asyncio.to_thread(interrupted_pod_restores, Path(svc.config.root) / "containers")
    await collect_orphans(svc)
    await collect_interrupted(svc)  # before any watch: a container a checkpoint left paused is resumed
    running = exited = 0
    for sandbox in svc.state.sandboxes.all():
        if sandbox.status.state != SANDBOX_READY:
            continue
        pod = sandbox.meta
        if not pod.infra_container:
            # Pinned namespaces: a reboot leaves the pin files, not the namespaces.
            pins = {**pod.namespace_paths, **({"net": pod.netns_path} if pod.netns_path else {})}
            holder_alive = not pod.pid or pidholder.is_holder_parent(
                pod.conmon_pid, pidholder.tag(svc.config.pid_holder_dir, pod.id)
            )
            if holder_alive and pod.pid:
                svc.monitor.watch(pod.id, pod.conmon_pid)
            if not holder_alive or not await asyncio.to_thread(all_pinned, pins):
                _mark_not_ready(svc, pod.id)
        elif conmon.is_conmon_of(pod.conmon_pid, pod.id):
            svc.monitor.watch(pod.id, pod.conmon_pid)
        else:
            _mark_not_ready(svc, pod.id)
    for container in svc.state.containers.all():
        if container.status.state not in (CONTAINER_CREATED, CONTAINER_RUNNING):
            continue
        if container.status.restore_pending:
            # Made from a checkpoint and not restored: no process to watch, unless a restore was under way.
            from crishim.runtime.checkpoint.restore_start import undo_interrupted

            exited += await undo_interrupted(svc, container)
            continue
        meta = container.meta
        if conmon.is_conmon_of(meta.conmon_pid, meta.id):
            svc.monitor.watch(meta.id, meta.conmon_pid)
            running += 1
        else:
            await lifecycle.record_exit(svc, meta.id)
            exited += 1
    for sandbox_id in unanswered_pods:
        await _remove_unanswered_restore(svc, sandbox_id)
    log.info("recovered state: %d live containers watched, %d exits recorded from the downtime", running, exited)


async def _remove_unanswered_restore(svc: Services, sandbox_id: str) -> None:
    """A pod a RestorePod call made before the daemon died: the caller never got its ID, so it goes."""
    from crishim.runtime.sandbox.lifecycle import remove_pod_sandbox

    try:
        await remove_pod_sandbox(svc, sandbox_id)
    except Exception:  # noqa: BLE001 - one pod that will not go must not stop the start-up
        log.exception("removing pod %s, left by a RestorePod the daemon was killed in", sandbox_id[:13])
        return
    log.warning("removed pod %s: the daemon was killed while RestorePod made it", sandbox_id[:13])
