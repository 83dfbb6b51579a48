"""A PID namespace holder's place in its pod: its cgroup, and its end.

The holder (runtime/sandbox/pidholder.py) stands where a pause container stood, so it
goes where the pause container went: the cgroup at the pod's cgroupsPath for the
sandbox, `<pod cgroup>/<sandbox ID>` under cgroupfs (made here, as runc made it), or a
scope in the pod's slice under systemd, named as runc named the pause container's (one
D-Bus call, as conmon's scope).
Pod stats then count it among the pod's processes, and kubelet sees no process of
the pod outside the pod's cgroup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from crishim.cgroups.paths import cgroups_path_to_fs
from crishim.cgroups.stats import cgroup_for
from crishim.runtime.sandbox import pidholder
from crishim.runtime.services import Services

SYSTEMD = "systemd"


def scope_name(cgroups_path: str) -> str:
    """The scope runc would have made for a pause container at `cgroups_path` (`slice:prefix:id`)."""
    _, prefix, name = cgroups_path.split(":", 2)
    return f"{prefix}-{name}.scope"


def placement(svc: Services, sandbox_id: str, cgroups_path: str) -> Callable[[pidholder.Holder], None]:
    """What moves a holder and its `unshare` into the pod's cgroup for the sandbox (blocking)."""
    if svc.cgroup_driver == SYSTEMD:
        slice_ = cgroups_path.split(":", 1)[0]

        def into_scope(held: pidholder.Holder) -> None:
            from crishim.cgroups import systemd_scope

            description = f"crishim PID namespace holder of pod {sandbox_id}"
            systemd_scope.start_scope(scope_name(cgroups_path), slice_, [held.parent_pid, held.pid], description)

        return into_scope

    def into_cgroup(held: pidholder.Holder) -> None:
        cgroup = cgroup_for(cgroups_path_to_fs(cgroups_path, "cgroupfs"))
        cgroup.create()
        for pid in (held.parent_pid, held.pid):
            cgroup.add_process(pid)

    return into_cgroup


async def remove_cgroup(svc: Services, cgroups_path: str) -> None:
    """The holder's cgroupfs cgroup, once it is empty; missing is fine. A systemd scope goes by itself."""
    if cgroups_path and svc.cgroup_driver != SYSTEMD:
        await asyncio.to_thread(cgroup_for(cgroups_path_to_fs(cgroups_path, "cgroupfs")).remove)


async def release(svc: Services, sandbox_id: str, held: pidholder.Holder, cgroups_path: str) -> None:
    """Ends the holder, and with it every process left in the pod's PID namespace; then its cgroup.

    SIGKILL to catatonit, then until its `unshare` has exited and been reaped: the exit
    monitor, which watches that `unshare` from RunPodSandbox (or the daemon's start) on,
    says when through its pidfd; without a watch the processes are polled. Gone is fine.
    A systemd scope goes by itself once its processes have.
    """
    tag = pidholder.tag(svc.config.pid_holder_dir, sandbox_id)
    await asyncio.to_thread(pidholder.kill, held, tag)
    if svc.monitor.watching(sandbox_id):
        await svc.monitor.wait(sandbox_id, 10.0)
    await asyncio.to_thread(pidholder.end, held, tag)  # at once when the watch saw them go
    await remove_cgroup(svc, cgroups_path)


def cgroupfs_cgroup_of(pid: int, sandbox_id: str) -> str | None:
    """The cgroupfs cgroup (relative path) `pid` was placed in for `sandbox_id`, if any: how the
    start-up sweep finds the cgroup of a holder no record names."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(":", 2)[-1]
        if path.endswith(f"/{sandbox_id}"):
            return path
    return None


def remove_cgroupfs_cgroup(relative: str) -> None:
    """Blocking: rmdir the cgroupfs cgroup at `relative` on every hierarchy; missing is fine."""
    cgroup_for(relative).remove()
