"""Start-up reconcile: the SQLite records against what really runs.

After a crash (kill -9 included) containers kept running under their conmon;
exits that happened while the daemon was down are in conmon's exit files.
Nothing the kubelet saw before may change, except those exits.
"""

from __future__ import annotations

import logging
from pathlib import Path

from crishim.runtime.container import lifecycle
from crishim.runtime.errors import NotFound
from crishim.runtime.services import Services
from crishim.runtime.state.records import (
    CONTAINER_CREATED,
    CONTAINER_RUNNING,
    SANDBOX_NOTREADY,
    SANDBOX_READY,
)

log = logging.getLogger("crishim.recover")


def conmon_alive(pid: int, object_id: str) -> bool:
    """The pid is still the conmon of this object (not a recycled pid)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"conmon") and object_id.encode() in cmdline


async def on_object_exit(svc: Services, object_id: str) -> None:
    """Exit of a conmon: a workload container's exit, or the pod's infra container dying."""
    try:
        svc.state.get_container(object_id)
    except NotFound:
        try:
            sandbox = svc.state.get_sandbox(object_id)
        except NotFound:
            return
        if sandbox.state == SANDBOX_READY:
            log.warning("infra container of sandbox %s exited; the sandbox is NOTREADY", object_id[:13])
            svc.state.set_sandbox(object_id, state=SANDBOX_NOTREADY)
        return
    await lifecycle.record_exit(svc, object_id)


async def reconcile(svc: Services) -> None:
    from crishim.runtime.orphans import collect_orphans

    await collect_orphans(svc)
    running = exited = 0
    for sandbox in svc.state.list_sandboxes():
        if sandbox.state != SANDBOX_READY:
            continue
        if conmon_alive(sandbox.conmon_pid, sandbox.id):
            svc.monitor.watch(sandbox.id, sandbox.conmon_pid)
        else:
            svc.state.set_sandbox(sandbox.id, state=SANDBOX_NOTREADY)
    for container in svc.state.list_containers():
        if container.state not in (CONTAINER_CREATED, CONTAINER_RUNNING):
            continue
        if conmon_alive(container.conmon_pid, container.id):
            svc.monitor.watch(container.id, container.conmon_pid)
            running += 1
        else:
            await lifecycle.record_exit(svc, container.id)
            exited += 1
    log.info("recovered state: %d live containers watched, %d exits recorded from the downtime", running, exited)
