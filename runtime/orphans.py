"""Collects what a crash left half-made: objects on the machine that no record names.

RunPodSandbox and CreateContainer commit their record last, so a daemon killed
mid-flow leaves a netns, a CNI allocation, an overlay mount, a conmon and runc
state, or a directory that nothing lists. At start-up each is undone, so that
everything the daemon lists exists and everything that exists is listed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from crishim.oci import conmon, processes
from crishim.oci.mounttable import mount_points
from crishim.runtime.container import launch as launching
from crishim.runtime.mounts import unmount
from crishim.runtime.sandbox import holder, pidholder
from crishim.runtime.services import Services

log = logging.getLogger("crishim.orphans")


def _unmount_under(directory: Path) -> None:
    """Unmounts every mount below `directory`, deepest first, and one on `directory` itself (a
    restore's stage unpacked in memory, runtime/checkpoint/memstage.py)."""
    top = str(directory.resolve())
    targets = [point for point in mount_points() if point.startswith(top + "/") or point == top]
    for target in sorted(targets, key=len, reverse=True):
        unmount(Path(target))


async def _stop_unrecorded_conmons(svc: Services, known: set[str]) -> int:
    """Kills conmons no record names, with whatever runtime command they still run.

    Killed before the runtime listing below, so a `runc create` cannot finish after the
    sweep has looked and leave a container nobody collects.
    """
    unrecorded = {cid: pids for cid, pids in conmon.conmons_for(svc.config.exits_dir).items() if cid not in known}
    for cid, pids in unrecorded.items():
        for pid in pids:
            await asyncio.to_thread(processes.kill_tree, pid)
        log.warning("killed conmon %s of container %s, which no record names (a crash mid-create)", pids, cid[:13])
    return len(unrecorded)


async def _stop_unrecorded_holders(svc: Services, known: set[str]) -> int:
    """Ends PID namespace holders no record names (a crash between their start and the record),
    and removes the cgroupfs cgroup they were placed in (a systemd scope goes by itself)."""
    found = await asyncio.to_thread(pidholder.parents_for, svc.config.pid_holder_dir)
    unrecorded = {sid: pids for sid, pids in found.items() if sid not in known}
    for sid, pids in unrecorded.items():
        for pid in pids:
            cgroup = holder.cgroupfs_cgroup_of(pid, sid)
            await asyncio.to_thread(processes.kill_tree, pid)
            if cgroup is not None:
                await asyncio.to_thread(holder.remove_cgroupfs_cgroup, cgroup)
        log.warning("killed the PID namespace holder %s of pod %s, which no record names", pids, sid[:13])
    return len(unrecorded)


async def collect_orphans(svc: Services) -> None:
    known_sandboxes = {s.meta.id for s in svc.state.sandboxes.all()}
    known_containers = {c.meta.id for c in svc.state.containers.all()}
    known = known_sandboxes | known_containers
    removed = await _stop_unrecorded_conmons(svc, known)
    removed += await _stop_unrecorded_holders(svc, known_sandboxes)

    for handler in svc.handlers.values():
        try:
            listed = await handler.runtime.list_containers()
        except Exception as exc:  # noqa: BLE001 - an unusable handler has nothing to collect
            log.warning("cannot list %s containers to collect orphans: %s", handler.name, exc)
            continue
        for item in listed:
            object_id = item.get("id", "")
            if object_id and object_id not in known:
                await launching.signal_quietly(handler, object_id, 9)
                await launching.delete_quietly(handler, object_id)
                removed += 1

    for kind, ids in (("sandboxes", known_sandboxes), ("containers", known_containers)):
        base = Path(svc.config.root) / kind
        if not base.is_dir():
            continue
        for entry in base.iterdir():
            if entry.name in ids:
                continue
            await asyncio.to_thread(_unmount_under, entry)
            for lease in (f"sandbox:{entry.name}", f"container:{entry.name}"):
                svc.images.release(lease)
            await asyncio.to_thread(shutil.rmtree, entry, True)
            removed += 1

    # Image-volume leases of the containers just collected.
    svc.images.sweep_volume_leases()

    # Pins and CNI cache entries no record names: DEL from the cache frees their IPs.
    removed += len(await svc.network.collect_orphans(known_sandboxes))

    for object_id in conmon.exit_file_ids(svc.config.exits_dir):
        if object_id not in known:
            conmon.exit_file_path(svc.config.exits_dir, object_id).unlink(missing_ok=True)
    if removed:
        log.warning("removed %d objects a crash left half-made", removed)
