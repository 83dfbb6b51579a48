"""Restore into a new pod, its second half: StartContainer of a container made from a checkpoint.

    conmon --restore <bundle>/checkpoint  ->  runc restore --detach (CRIU)  ->  pids recorded  ->  RUNNING

conmon's restore mode runs `runc restore` in place of `runc create`, so conmon
holds the restored process's stdio and writes its log (at the new pod's log
path, which create carried the checkpointed log into, so the log continues) as
for any container. The process exists only once CRIU has restored it, so its
pid and conmon's are recorded here (`update_meta`), not at create. A restore
that fails leaves no conmon, runc state or CRIU behind: the container is
EXITED with CRIU's reason, as a failed `runc start` leaves one. So is a restore
the daemon was killed in (`undo_interrupted`, at start-up): its pids were never
recorded, so its conmon is ended rather than adopted half-known.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import shutil
import threading
from pathlib import Path

from crishim.oci import conmon, processes
from crishim.oci.checkpoint import RESTORE_LOG, dump_log_errors
from crishim.oci.errors import OciError
from crishim.runtime.bundle import read_runtime_spec
from crishim.runtime.checkpoint import archive, late_pages, memstage
from crishim.runtime.checkpoint.phases import LOG_PREFIX, Phases
from crishim.runtime.container import launch as launching
from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.ids import now_ns
from crishim.runtime.nri import nri_pb2
from crishim.runtime.nri import steps as nri_steps
from crishim.runtime.services import Handler, Services
from crishim.runtime.state.records import CONTAINER_CREATED, CONTAINER_EXITED, CONTAINER_RUNNING, Container

log = logging.getLogger("crishim.checkpoint")

# CRIU reads every page back in: a container of gigabytes takes a while on a slow disk.
RESTORE_TIME_LIMIT = 300.0
RESTORE_FAILED_EXIT_CODE = 128


async def restore_container(svc: Services, handler: Handler, record: Container) -> Container:
    """Restores the container from the CRIU images in its bundle; returns its record, RUNNING."""
    meta = record.meta
    bundle = Path(meta.bundle)
    containers = svc.state.containers
    started_at = now_ns()
    phases = Phases()
    containers.update_status(meta.id, lambda s: dataclasses.replace(s, starting=True))
    try:
        if (copy_error := late_pages.failure(bundle)) is not None:
            raise RuntimeError(copy_error)
        await nri_steps.container_event(svc, nri_pb2.START_CONTAINER, meta.id)
        result = await launching.launch(
            svc, handler, meta.id, bundle,
            log_path=Path(meta.log_path) if meta.log_path else bundle / "container.log",
            tty=meta.tty, stdin=meta.stdin, stdin_once=meta.stdin_once, cgroups_path=meta.cgroups_path,
            restore_from=bundle / archive.CHECKPOINT_DIRECTORY, time_limit=RESTORE_TIME_LIMIT,
        )  # fmt: skip
    except Exception as exc:
        # The page images' copy failing while CRIU waited for it is what to report, not CRIU's missing file.
        copy_error = late_pages.failure(bundle)
        raise await _failed(svc, handler, record, RuntimeError(copy_error) if copy_error else exc) from exc
    phases.mark("conmon and runc restore")
    await asyncio.to_thread(late_pages.drop_hook, bundle)
    containers.update_meta(meta.id, lambda m: dataclasses.replace(m, pid=result.pid, conmon_pid=result.conmon_pid))
    await _set_hostname(bundle, result.pid)
    phases.mark("hostname")
    svc.monitor.watch(meta.id, result.conmon_pid)
    restored = containers.update_status(
        meta.id,
        lambda s: dataclasses.replace(
            s,
            starting=False,
            restore_pending=False,
            state=CONTAINER_RUNNING if s.state == CONTAINER_CREATED else s.state,
            started_at=started_at,
        ),
    )
    # The images are in the process now; a container of gigabytes should not keep them twice. Removed
    # behind the call's back: the kubelet need not wait for it, and RemoveContainer takes what is left.
    threading.Thread(target=_drop_images, args=(bundle,), name="crishim-images", daemon=True).start()
    log.info("container %s restored from its checkpoint (pid %d)", meta.id[:13], result.pid)
    log.info("%s restore's start of %s: %s", LOG_PREFIX, meta.id[:13], phases.summary())
    return restored


def _drop_images(bundle: Path) -> None:
    memstage.release_bundle_images(bundle)  # in memory: freed at once; on disk: removed below
    shutil.rmtree(bundle / archive.CHECKPOINT_DIRECTORY, True)


async def undo_interrupted(svc: Services, record: Container) -> bool:
    """At start-up, for a container still `restore_pending`: if a StartContainer had begun its
    restore when the daemon died, ends what it started and records the container EXITED with
    StartError. Returns whether it had begun.

    Begun means any trace of it: a conmon or runc of the container alive, conmon's exit
    file, CRIU's restore log in the bundle, or runc's state of it (conmon may have given up
    when the daemon's end of its sync pipe closed, leaving `runc restore` and CRIU, or the
    restored process, to run on alone). A restore never started whose page images the
    daemon was still copying in when it died (late_pages.py) cannot start: it is EXITED too."""
    meta = record.meta
    handler = svc.handler(meta.runtime_handler)
    exits_dir = svc.config.exits_dir
    live = (await asyncio.to_thread(conmon.conmons_for, exits_dir)).get(meta.id, [])
    # conmon's, and a `runc restore` that outlived its conmon, with CRIU and its tasks below it.
    live += [pid for pid in await asyncio.to_thread(processes.naming, meta.id) if pid not in live]
    traces = [
        bool(live),
        meta.conmon_pid > 0,
        conmon.exit_file_path(exits_dir, meta.id).exists(),
        (Path(meta.bundle) / RESTORE_LOG).exists(),
        await _runtime_knows(handler, meta.id),
    ]
    if not any(traces):
        if not await asyncio.to_thread(late_pages.interrupted, Path(meta.bundle)):
            return False  # never started: it waits, CREATED, for StartContainer
        cut = RuntimeError(
            "the daemon was killed while CreateContainer copied the checkpoint's memory into the container; "
            "create the container again from its checkpoint"
        )
        log.warning("%s", await _failed(svc, handler, record, cut))
        return True
    for pid in live:  # conmon, `runc restore`, CRIU and the tasks it was bringing back
        await asyncio.to_thread(processes.kill_tree, pid)
    interrupted = RuntimeError(
        "the daemon was killed while CRIU restored it; create the container again from its checkpoint"
    )
    error = await _failed(svc, handler, record, interrupted)
    log.warning("%s (conmon %s ended)", error, live or meta.conmon_pid)
    return True


async def _runtime_knows(handler: Handler, container_id: str) -> bool:
    try:
        await handler.runtime.state(container_id)
    except OciError:
        return False
    return True


async def _set_hostname(bundle: Path, pid: int) -> None:
    """The new pod's hostname, in the restored process's UTS namespace.

    CRIU writes the checkpointed hostname back (the old pod's) into the UTS namespace
    it restores into, even the new pod's that runc has it join; the spec names the
    new pod's, which the pod's other containers see too. It is set by setns(2) and
    sethostname(2) in a thread started for it, which ends with it (setns changes only
    the calling thread; a pooled one must never be left in a pod's namespace), where
    `nsenter hostname` costs two programs' starts. A failure is logged: the process
    runs, under the old name.
    """
    spec = await asyncio.to_thread(read_runtime_spec, bundle)
    hostname = (spec or {}).get("hostname")
    if not hostname:
        return  # the host's UTS namespace (host network): not ours to rename
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def body() -> None:
        try:
            _sethostname_in(pid, str(hostname))
            done.set_result(None)
        except BaseException as exc:  # handed to the waiter; the thread just ends
            done.set_exception(exc)

    threading.Thread(target=body, name="crishim-uts", daemon=True).start()
    try:
        await asyncio.wrap_future(done)
    except OSError as exc:
        log.warning("restored process %d keeps its checkpointed hostname: %s", pid, exc)


_CLONE_NEWUTS = 0x04000000


def _sethostname_in(pid: int, hostname: str) -> None:
    """Blocking, in a thread of its own that ends after: joins `pid`'s UTS namespace and names it."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWUTS) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into process {pid}'s UTS namespace: {os.strerror(err)}")
    finally:
        os.close(fd)
    name = hostname.encode()
    if libc.sethostname(name, len(name)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sethostname({hostname!r}): {os.strerror(err)}")


async def _failed(svc: Services, handler: Handler, record: Container, exc: Exception) -> FailedPrecondition:
    """Cleans up what the restore started and records why it failed; returns the error to raise."""
    meta = record.meta
    criu = await asyncio.to_thread(dump_log_errors, Path(meta.bundle), RESTORE_LOG)
    message = f"restore of container {meta.id} failed: {exc}" + (f" (CRIU: {criu})" if criu else "")
    await launching.kill_and_delete(svc, handler, meta.id)
    svc.state.containers.update_status(
        meta.id,
        lambda s: dataclasses.replace(
            s,
            starting=False,
            restore_pending=False,
            state=CONTAINER_EXITED,
            started_at=s.started_at or now_ns(),
            finished_at=now_ns(),
            exit_code=RESTORE_FAILED_EXIT_CODE,
            reason="StartError",
            message=message[:4096],
        ),
    )
    return FailedPrecondition(message)
