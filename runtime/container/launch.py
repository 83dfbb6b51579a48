"""Glue between the flows and oci/: conmon launch, kill, delete, OOM detection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from crishim.cgroups.errors import CgroupError
from crishim.cgroups.paths import to_fs
from crishim.cgroups.stats import cgroup_for
from crishim.oci import conmon, processes
from crishim.oci import errors as oci_errors
from crishim.oci.checkpoint import restore_opts
from crishim.oci.criu_network import SHIM_DIRECTORY, path_without_lock
from crishim.oci.processes import reap
from crishim.runtime.services import Handler, Services
from crishim.runtime.state.records import ContainerMeta

log = logging.getLogger("crishim.container")


async def launch(
    svc: Services,
    handler: Handler,
    object_id: str,
    bundle: Path,
    *,
    log_path: Path,
    tty: bool,
    stdin: bool,
    stdin_once: bool,
    cgroups_path: str,
    restore_from: Path | None = None,
    time_limit: float = 60.0,
) -> conmon.ConmonResult:
    """conmon runs `runc create` (or `runc restore` from `restore_from`); returns the container's and conmon's PIDs.

    Under the systemd driver conmon gets a transient scope of its own in the slice of
    the container's cgroups path (`slice:prefix:id`), as CRI-O's `conmon_cgroup = "pod"`
    does: every process belongs to a unit, conmon is accounted to the pod instead of to
    crishim.service, and it outlives a restart of the service. The scope ends, and is
    unloaded even after a failure, once conmon exits.
    """
    launch_request = conmon.ConmonLaunch(
        cid=object_id,
        bundle=bundle,
        log_path=log_path,
        exit_dir=svc.config.exits_dir,
        socket_dir=svc.config.attach_dir,
        stdin=stdin,
        tty=tty,
        leave_stdin_open=stdin and not stdin_once,
        log_size_max=svc.config.log_size_max,
        restore_from=restore_from,
        restore_opts=restore_opts() if restore_from is not None else (),
        # A restore's CRIU skips its network lock (oci/criu_network.py).
        path=None if restore_from is None else await asyncio.to_thread(path_without_lock, bundle / SHIM_DIRECTORY),
    )
    return await conmon.launch_container(
        handler.runtime,
        launch_request,
        conmon_path=svc.config.conmon,
        time_limit=time_limit,
        before_start=_scope_entry(object_id, cgroups_path.split(":", 1)[0]) if handler.runtime.systemd_cgroup else None,
    )


def _scope_entry(object_id: str, slice_: str) -> Callable[[int], Awaitable[None]]:
    """What moves the waiting conmon `pid` into `crishim-conmon-<id>.scope` in `slice_`."""

    async def enter(pid: int) -> None:
        # Imported on first use: a node on the cgroupfs driver never loads the D-Bus code.
        from crishim.cgroups import systemd_scope

        await asyncio.to_thread(
            systemd_scope.start_scope, conmon.conmon_scope(object_id), slice_, pid, f"crishim conmon of {object_id}"
        )

    return enter


async def signal_quietly(handler: Handler, object_id: str, signal: int, *, directly: bool = False) -> None:
    """Sends a signal to the container's init; a container that is already gone is fine.

    `directly` signals the process from here when the runtime's state allows it
    (OciRuntime.signal_init), saving a runtime command, for containers never paused.
    """
    if directly and handler.runtime.signal_init(object_id, signal):
        return
    try:
        await handler.runtime.kill(object_id, signal)
    except Exception as exc:  # noqa: BLE001 - absent or stopped containers are the common case
        log.debug("kill %s %s: %s", object_id[:13], signal, exc)


async def delete_state(handler: Handler, object_id: str) -> None:
    """`runc delete --force`; a container the runtime does not know is already deleted.

    A delete that races another one (the exit handler's) can find the state half
    removed: crun then fails with "error loading .../config.json". One more try
    after a moment settles most; a state directory still without its config (crun)
    or state (runc) file can no longer be operated by the runtime at all, and the
    container's process is gone, so that leftover directory is removed here. So is the
    rootfs bind that a `runc restore` killed mid-way leaves mounted in it.
    """
    if not handler.runtime.has_state(object_id):
        return  # deleted already (the exit handler deletes an exited container)
    # Before the delete, so that its removal of the state directory never descends into the rootfs.
    if await asyncio.to_thread(handler.runtime.release_restore_root, object_id):
        log.warning("unmounted the rootfs bind an interrupted `runc restore` of %s left", object_id[:13])
    for attempt in range(2):
        try:
            await handler.runtime.delete(object_id, force=True)
            return
        except oci_errors.NotFound:
            # A restore killed before runc recorded the container leaves a directory it cannot load.
            await asyncio.to_thread(handler.runtime.remove_unloadable_state, object_id)
            return
        except oci_errors.OciError:
            if attempt == 0:
                await asyncio.sleep(0.2)
                continue
            if await asyncio.to_thread(handler.runtime.remove_unloadable_state, object_id):
                log.warning("%s left a half-deleted state for %s; removed it", handler.name, object_id[:13])
                return
            raise


async def delete_quietly(handler: Handler, object_id: str) -> None:
    """`delete_state` for clean-up paths: a failure is logged, not raised."""
    try:
        await delete_state(handler, object_id)
    except Exception as exc:  # noqa: BLE001 - clean-up goes on; the warning names what is left
        log.warning("cannot delete the runtime state of %s: %s", object_id[:13], exc)


async def kill_and_delete(
    svc: Services, handler: Handler, object_id: str, *, strict: bool = False, signal_directly: bool = False
) -> None:
    """SIGKILL, wait until conmon has recorded the exit and exited, then `runc delete --force`.

    Idempotent. Waiting for conmon itself (not only for its exit file) means that a
    StopPodSandbox or RemoveContainer that returned has left no conmon behind, and that
    the daemon, conmon's subreaper, reaps it rather than leaving a zombie. With `strict`,
    a failing delete raises instead of being logged, so the caller can keep its record
    until the runtime state is really gone. `signal_directly`: see signal_quietly.
    """
    _watch_conmon(svc, object_id)
    await signal_quietly(handler, object_id, 9, directly=signal_directly)
    if svc.monitor is not None and svc.monitor.watching(object_id):
        await svc.monitor.wait(object_id, 10.0)
    if strict:
        await delete_state(handler, object_id)
    else:
        await delete_quietly(handler, object_id)
    conmon_pid = _conmon_pid(svc, object_id)
    if conmon_pid:
        with contextlib.suppress(Exception):
            reap(conmon_pid)
    await _end_lingering_conmons(svc, object_id)


async def _end_lingering_conmons(svc: Services, object_id: str) -> None:
    """A conmon still running once the runtime state is gone serves nothing: end it.

    It should have exited with its container; one that did not (a crash at an unlucky
    moment, a conmon the pidfile does not name) would otherwise outlive every removal.
    """
    lingering = (await asyncio.to_thread(conmon.conmons_for, svc.config.exits_dir)).get(object_id, [])
    for pid in lingering:
        tree = await asyncio.to_thread(processes.kill_tree, pid)
        log.warning("conmon %d of %s outlived its container (with %s); killed it", pid, object_id[:13], tree[1:])


def _conmon_pid(svc: Services, object_id: str) -> int | None:
    """The PID conmon wrote into the bundle, of a sandbox's infra container or of a container."""
    return conmon.read_conmon_pid(svc.sandbox_dir(object_id)) or conmon.read_conmon_pid(svc.container_dir(object_id))


def _watch_conmon(svc: Services, object_id: str) -> None:
    """Arms the exit watch on a conmon nobody watches yet (an infra container's, or a
    container's not started), so kill_and_delete can wait for it to be gone."""
    if svc.monitor is None or svc.monitor.watching(object_id):
        return
    pid = _conmon_pid(svc, object_id)
    if pid and conmon.is_conmon_of(pid, object_id):
        svc.monitor.watch(object_id, pid)


async def oom_killed(svc: Services, meta: ContainerMeta) -> bool:
    """Whether the kernel OOM-killed a process of the container; called once it has exited.

    Asked in turn: conmon's `oom` file in the bundle (it watches memory.events, or v1's
    oom eventfd); the container cgroup's own `oom_kill` counter, while the cgroup is still
    there (cgroupfs: until `runc delete`); the kernel log, for a cgroup already gone
    (systemd removes a scope as its last process exits).
    """
    source = await asyncio.to_thread(_oom_evidence, svc, meta)
    if source:
        log.info("container %s was OOM-killed (seen in %s)", meta.id[:13], source)
    return source is not None


def _oom_evidence(svc: Services, meta: ContainerMeta) -> str | None:
    if conmon.oom_reported(Path(meta.bundle)):
        return "conmon's oom file"
    if not meta.cgroups_path:
        return None
    try:
        rel = to_fs(meta.cgroups_path, svc.cgroup_driver)
        if cgroup_for(rel).oom_kills():
            return "the cgroup's oom_kill counter"
    except (CgroupError, OSError) as exc:
        log.debug("no OOM counter for %s: %s", meta.id[:13], exc)
        return None
    if svc.oom_log is None:
        return None
    try:
        return "the kernel log" if svc.oom_log.killed(rel, meta.pid, meta.created_at) else None
    except OSError as exc:
        log.warning("reading the kernel log for OOM kills failed: %s", exc)
        return None
