"""Collects what a crash left half-made: objects on the machine that no record names.

RunPodSandbox and CreateContainer commit their record last, so a daemon killed
mid-flow leaves a netns, a CNI allocation, an overlay mount, a conmon and runc
state, or a directory that nothing lists. At start-up each is undone, so that
everything the daemon lists exists and everything that exists is listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from crishim.oci import conmon
from crishim.oci.mounttable import mount_points
from crishim.oci.runtime import reap
from crishim.runtime.container import launch as launching
from crishim.runtime.mounts import unmount
from crishim.runtime.services import Services

log = logging.getLogger("crishim.orphans")


def _unmount_under(directory: Path) -> None:
    """Unmounts every mount below `directory`, deepest first."""
    prefix = str(directory.resolve()) + "/"
    targets = [point for point in mount_points() if point.startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        unmount(Path(target))


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it, parents first (a runc create and its runc init)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue += [int(child) for child in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
    return found


async def _stop_unrecorded_conmons(svc: Services, known: set[str]) -> int:
    """Kills conmons no record names, with whatever runtime command they still run.

    Killed before the runtime listing below, so a `runc create` cannot finish after the
    sweep has looked and leave a container nobody collects.
    """
    unrecorded = {cid: pid for cid, pid in conmon.conmons_for(svc.config.exits_dir).items() if cid not in known}
    for cid, pid in unrecorded.items():
        tree = await asyncio.to_thread(_descendants, pid)
        for member in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        await asyncio.to_thread(_wait_gone, tree)
        log.warning("killed conmon %d of container %s, which no record names (a crash mid-create)", pid, cid[:13])
    return len(unrecorded)


def _wait_gone(pids: list[int], seconds: float = 5.0) -> None:
    """Blocking: until every pid is gone, reaping those that are our children.

    As the subreaper the daemon may have inherited the killed tree (collect it, or it stays
    as zombies); after a restart the tree is PID 1's, and a zombie of PID 1's counts as gone.
    """
    deadline = time.monotonic() + seconds
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if reap(pid) is None and _alive(pid)}
        if left:
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def collect_orphans(svc: Services) -> None:
    known_sandboxes = {s.meta.id for s in svc.state.sandboxes.all()}
    known_containers = {c.meta.id for c in svc.state.containers.all()}
    known = known_sandboxes | known_containers
    removed = await _stop_unrecorded_conmons(svc, known)

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
            for holder in (f"sandbox:{entry.name}", f"container:{entry.name}"):
                svc.images.release(holder)
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
