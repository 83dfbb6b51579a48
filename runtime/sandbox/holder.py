"""A PID namespace holder's place in its pod: its cgroup, and its end.

The holder (runtime/sandbox/pidholder.py) stands where a pause container stood, so it
goes where the pause container went: the cgroup at the pod's cgroupsPath for the
sandbox, `<pod cgroup>/<sandbox ID>` under cgroupfs (made here, as runc made it), or a
scope of its own in the pod's slice under systemd (one D-Bus call, as conmon's scope).
Pod stats then count it among the pod's processes, and kubelet sees no process of
the pod outside the pod's cgroup.
"""

from __future__ import annotations

import asyncio

from crishim.cgroups.paths import cgroups_path_to_fs
from crishim.cgroups.stats import cgroup_for
from crishim.runtime.sandbox import pidholder
from crishim.runtime.services import Services

SYSTEMD = "systemd"


def scope_name(sandbox_id: str) -> str:
    return f"crishim-holder-{sandbox_id}.scope"


async def enter_cgroup(svc: Services, sandbox_id: str, held: pidholder.Holder, cgroups_path: str) -> None:
    """Moves the holder and its `unshare` into the pod's cgroup for the sandbox."""
    pids = [held.parent_pid, held.pid]
    if svc.cgroup_driver == SYSTEMD:
        from crishim.cgroups import systemd_scope

        slice_ = cgroups_path.split(":", 1)[0]
        description = f"crishim PID namespace holder of pod {sandbox_id}"
        await asyncio.to_thread(systemd_scope.start_scope, scope_name(sandbox_id), slice_, pids, description)
        return
    await asyncio.to_thread(_enter_cgroupfs, cgroups_path, pids)


def _enter_cgroupfs(cgroups_path: str, pids: list[int]) -> None:
    cgroup = cgroup_for(cgroups_path_to_fs(cgroups_path, "cgroupfs"))
    cgroup.create()
    for pid in pids:
        cgroup.add_process(pid)


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
    if cgroups_path and svc.cgroup_driver != SYSTEMD:  # missing is fine: a stop retried
        await asyncio.to_thread(cgroup_for(cgroups_path_to_fs(cgroups_path, "cgroupfs")).remove)
