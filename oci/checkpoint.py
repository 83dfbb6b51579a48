"""`runc checkpoint`: CRIU images of a running container, under a time limit.

runc drives CRIU itself (`criu swrk`, a child of runc). A checkpoint that
overruns its time must end CRIU too, not only runc: a CRIU left behind keeps
the container's processes seized. So runc runs in a session of its own and,
on a timeout or a cancellation, runc and everything below it are killed and
collected before the error is raised.

runc declares the pod's network namespace to CRIU as external by itself: the
container's config names it by path (the pinned pod netns), and runc passes
`--external net[inode]:...` for a namespace given by path, as it also does for
the bind mounts of the spec (external mounts). Nothing here needs to name them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .criu_network import SHIM_DIRECTORY, path_without_lock
from .errors import DeadlineExceeded, FailedPrecondition, Unavailable
from .processes import still_there, wait_gone
from .runtime import OciRuntime

# CRIU writes its log into the work directory under these names (runc's choice).
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
# The work directory also records runc's pid, the ID of the session runc and CRIU run in: a
# daemon restarted after kill -9 ends a checkpoint it no longer waits for (end_session).
SESSION_FILE = "checkpoint.session"
_LOG_TAIL_LINES = 5
# runc names CRIU's log file in its error; the file goes with the staging directory, so its words are quoted instead.
_LOG_FILE_NOTE = re.compile(r"\\nlog file: \S+?(?=\"|$)|\nlog file: \S+")


@dataclass(frozen=True, slots=True)
class CheckpointPaths:
    """Where CRIU writes: its images, and its log and statistics (`stats-dump`)."""

    images: Path
    work: Path


def checkpoint_args(cid: str, paths: CheckpointPaths, *, leave_running: bool = True) -> list[str]:
    """The `runc checkpoint` arguments after the global ones.

    --file-locks: a process holding a lock would otherwise fail the dump.
    --manage-cgroups-mode soft: the cgroup tree is the kubelet's; CRIU records it and restores
    only what is missing, which is runc's default, named so the archive does not depend on it.
    """
    args = ["checkpoint", "--image-path", str(paths.images), "--work-path", str(paths.work)]
    if leave_running:
        args.append("--leave-running")
    return [*args, "--file-locks", "--manage-cgroups-mode", "soft", cid]


def restore_opts() -> tuple[str, ...]:
    """The `runc restore` options after conmon's own: the same file-lock and cgroup modes as the dump."""
    return ("--file-locks", "--manage-cgroups-mode", "soft")


def dump_log_errors(work: Path, name: str = DUMP_LOG) -> str:
    """The last error lines of CRIU's log (`name`: dump.log, or restore.log), where its reason is written."""
    try:
        lines = (work / name).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line.strip() for line in lines if "Error" in line or "error" in line]
    return "; ".join(errors[-_LOG_TAIL_LINES:])


async def checkpoint(runtime: OciRuntime, cid: str, paths: CheckpointPaths, *, time_limit: float) -> None:
    """Runs `runc checkpoint --leave-running`; runc and CRIU are gone when this returns or raises."""
    if runtime.kind != "runc":
        raise Unavailable(f"runtime handler {runtime.name!r} ({runtime.kind}) cannot checkpoint through runc")
    # CRIU's network lock skipped (criu_network.py): its commands do nothing on this PATH.
    path = await asyncio.to_thread(path_without_lock, paths.work / SHIM_DIRECTORY)
    proc = await asyncio.create_subprocess_exec(
        *runtime.base_args(), *checkpoint_args(cid, paths),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, env={**os.environ, "PATH": path},
    )  # fmt: skip
    try:
        await asyncio.to_thread((paths.work / SESSION_FILE).write_text, f"{proc.pid}\n")
        async with asyncio.timeout(time_limit):
            _, err = await proc.communicate()
    except BaseException as exc:
        await _end(proc)
        if isinstance(exc, TimeoutError):
            raise DeadlineExceeded(f"{runtime.name} checkpoint of {cid} did not finish within {time_limit:g}s; "
                                   "CRIU was stopped and the container left running") from None  # fmt: skip
        raise
    if proc.returncode != 0:
        text = _LOG_FILE_NOTE.sub("", err.decode(errors="replace").strip())
        detail = dump_log_errors(paths.work)
        # CRIU refusing this container (a resource it cannot dump, this kernel) is the container's
        # or the node's state, not a fault of the daemon: the caller can act on CRIU's reason.
        raise FailedPrecondition(
            f"{runtime.name} checkpoint of {cid} failed: {text or f'exit status {proc.returncode}'}"
            + (f" (CRIU: {detail})" if detail else "")
        )


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Kills runc and what it started (CRIU), and collects them all."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    # runc may still be starting CRIU, and CRIU its own helpers: the session is emptied until it
    # stays empty, not killed from one look at it. asyncio collects runc itself.
    await asyncio.to_thread(_empty_session, proc.pid)
    await asyncio.shield(proc.wait())


def _empty_session(sid: int, seconds: float = 30.0) -> None:
    """Blocking: SIGKILL every member of session `sid` but its leader, again and again, until
    none is left alive; reaps those the daemon inherited (it is the subreaper), else they stay
    as zombies. A member that left the leader's tree (CRIU once runc is gone) is still found."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        members = [pid for pid, session in _sessions() if session == sid and pid != sid]
        left = [pid for pid in members if still_there(pid)]
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def end_session(work: Path) -> list[int]:
    """Blocking: kills and collects a checkpoint's runc and CRIU left by a daemon that died.

    Only a session that is plainly this checkpoint's is ended: its leader (runc) still runs
    with this work directory on its command line, or, runc gone, only CRIU is left in it.
    Returns the pids ended.
    """
    try:
        sid = int((work / SESSION_FILE).read_text())
    except (OSError, ValueError):
        return []
    members = [pid for pid, session in _sessions() if session == sid]
    if not members:
        return []
    runc_runs = sid in members
    if runc_runs and str(work) not in _cmdline(sid):
        return []  # the pid is another process's now
    if not runc_runs and any(_comm(pid) != "criu" for pid in members):
        return []
    if runc_runs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sid, signal.SIGKILL)
    _empty_session(sid)
    wait_gone([sid] if runc_runs else [])
    return members


def _sessions() -> list[tuple[int, int]]:
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
            found.append((int(stat_file.parent.name), int(fields[3])))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
