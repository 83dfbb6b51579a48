"""Launching conmon, the per-container monitor, and everything it reads and leaves behind.

conmon runs `<runtime> create`, holds the container's stdio, writes CRI-format
logs (k8s-file driver), serves the attach socket and writes the exit code to
`<exit_dir>/<cid>`. It must outlive the daemon: we start it in a session of
its own and without `--sync`, so the process we spawn forks the real
monitor and exits at once; we only wait for that short-lived parent. The
monitor is then reparented to the nearest subreaper (the daemon, when it
called runtime.become_subreaper(); else PID 1): call processes.reap(conmon_pid)
after the container's exit is seen.

The container PID (or runc's error) comes back on the sync pipe whose fd
number conmon reads from $_OCI_SYNCPIPE: one JSON line, {"data": PID} or
{"data": -1, "message": "..."} with --api-version 1.

This module is the one place that knows conmon's command line and its files:
in the bundle (pid files, its own log, the attach socket, the control FIFO, the
oom marker), the exit file in the exit directory and its directory under the
socket directory. runtime/ asks for them by bundle or container ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DeadlineExceeded, Internal, InvalidArgument, RuntimeCommandError, Unavailable
from .runtime import OciRuntime, read_pid

DEFAULT_LOG_SIZE_MAX = -1  # conmon: no limit; the kubelet rotates logs
CONMON_LOG_TAIL = 4096  # of conmon's own log, quoted when it reports no PID
# conmon's control FIFO takes "TYPE ARG1 ARG2\n" lines.
_CTL_RESIZE = 1
_CTL_REOPEN_LOG = 2
# On the attach socket conmon prefixes each buffer with the pipe it came from,
# and reads at most one buffer per SEQPACKET message from the client.
ATTACH_PIPE_STDOUT = 2
ATTACH_PIPE_STDERR = 3
ATTACH_MAX_PACKET = 8192


@dataclass(frozen=True, slots=True)
class ConmonResult:
    pid: int  # the container's init process
    conmon_pid: int


@dataclass(frozen=True, slots=True)
class ConmonLaunch:
    """One container for conmon to create and watch; `name` defaults to `cid`."""

    cid: str
    bundle: Path
    log_path: Path
    exit_dir: Path
    socket_dir: Path
    name: str = ""
    stdin: bool = False
    tty: bool = False
    # CRI stdin_once=false: a client leaving attach must not close the container's stdin.
    leave_stdin_open: bool = False
    log_size_max: int = DEFAULT_LOG_SIZE_MAX
    log_level: str = "info"
    # CRIU's images to restore from: conmon then runs `<runtime> restore --detach` instead of
    # `create`, and the container is running when the launch returns.
    restore_from: Path | None = None
    restore_opts: tuple[str, ...] = ()  # `runtime restore` options (conmon's --runtime-opt)
    # The PATH conmon, the runtime and what it starts (CRIU) search; the daemon's own when None.
    path: str | None = None


# ---------------------------------------------------------------- files


def pid_file(bundle: Path) -> Path:
    """Where the runtime writes the container's init PID."""
    return Path(bundle) / "pidfile"


def conmon_pid_file(bundle: Path) -> Path:
    return Path(bundle) / "conmon.pid"


def conmon_log_file(bundle: Path) -> Path:
    """conmon's own diagnostics (not the container's log)."""
    return Path(bundle) / "conmon.log"


def attach_socket_path(bundle: Path) -> Path:
    """With --full-attach conmon listens on <bundle>/attach (no sun_path truncation)."""
    return Path(bundle) / "attach"


def ctl_fifo_path(bundle: Path) -> Path:
    return Path(bundle) / "ctl"


def read_conmon_pid(bundle: Path) -> int | None:
    return read_pid(conmon_pid_file(bundle))


def oom_reported(bundle: Path) -> bool:
    """conmon leaves an `oom` file (`.oom` in some versions) when it saw the cgroup's OOM event."""
    return any((Path(bundle) / name).exists() for name in ("oom", ".oom"))


def exit_file_path(exit_dir: Path, cid: str) -> Path:
    return Path(exit_dir) / cid


def exit_file_ids(exit_dir: Path) -> list[str]:
    """The container IDs that have an exit file."""
    return [path.name for path in Path(exit_dir).glob("*")]


def read_exit(exit_dir: Path, cid: str) -> tuple[int, int] | None:
    """(exit code, finish time in ns) from conmon's exit file; None while there is none.

    A file that does not hold a number counts as none: the monitor died before writing it.
    """
    path = exit_file_path(exit_dir, cid)
    try:
        text = path.read_text().strip()
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    try:
        return int(text), mtime
    except ValueError:
        return None


def remove_leftovers(exit_dir: Path, socket_dir: Path, cid: str) -> None:
    """Blocking: the exit file and the socket directory conmon made for `cid` (the bundle's files
    go with the bundle)."""
    exit_file_path(exit_dir, cid).unlink(missing_ok=True)
    shutil.rmtree(Path(socket_dir) / cid, True)


def is_conmon_of(pid: int, cid: str) -> bool:
    """`pid` is still the conmon watching `cid` (not a recycled pid)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"conmon") and cid.encode() in cmdline


def conmons_for(exit_dir: Path) -> dict[str, list[int]]:
    """Every live conmon that writes its exit file to `exit_dir` (one daemon's), by container ID.

    A daemon killed between launching conmon and committing the record leaves a conmon no
    record names, possibly still inside `runc create`; the start-up sweep finds it here.
    An ID can have two: conmon's first process until its daemonized child has reported.
    """
    wanted = str(exit_dir).encode()
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[0].endswith(b"conmon") and _option(cmdline, b"--exit-dir") == wanted:
            cid = _option(cmdline, b"-c")
            if cid:
                found.setdefault(cid.decode(errors="replace"), []).append(int(entry.name))
    return found


def _option(cmdline: list[bytes], name: bytes) -> bytes | None:
    """The value after `name` in a command line, as build_args writes it."""
    try:
        return cmdline[cmdline.index(name) + 1]
    except (ValueError, IndexError):
        return None


# ---------------------------------------------------------------- control FIFO


def _write_ctl(ctl_fifo: Path, line: str) -> None:
    """FileNotFoundError without a FIFO; ENXIO when no conmon holds it open.

    O_NONBLOCK: fail at once rather than hang on a dead container.
    """
    fd = os.open(ctl_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def reopen_log(bundle: Path) -> None:
    """Ask conmon to reopen its log file (after the kubelet rotated it)."""
    ctl = ctl_fifo_path(bundle)
    try:
        await asyncio.to_thread(_write_ctl, ctl, f"{_CTL_REOPEN_LOG} 0 0\n")
    except FileNotFoundError as e:
        raise InvalidArgument(f"no conmon control FIFO at {ctl}: the container has no monitor") from e
    except OSError as e:
        raise Internal(f"conmon is not listening on {ctl}: {e.strerror}") from e


def resize_terminal(bundle: Path, width: int, height: int) -> None:
    """Blocking: sets the size of the container's terminal; a conmon already gone is fine."""
    try:
        _write_ctl(ctl_fifo_path(bundle), f"{_CTL_RESIZE} {height} {width}\n")
    except OSError as exc:
        if exc.errno not in (errno.ENXIO, errno.ENOENT):
            raise


# ---------------------------------------------------------------- launching


def build_args(conmon_path: str, runtime_command: Sequence[str], launch: ConmonLaunch) -> list[str]:
    """conmon's command line; `runtime_command` is the runtime's path and its global options."""
    runtime_path, *runtime_args = runtime_command
    bundle = launch.bundle
    args = [
        conmon_path, "--api-version", "1",
        "-c", launch.cid, "-n", launch.name or launch.cid, "-u", launch.cid,
        "-r", runtime_path, *(arg for option in runtime_args for arg in ("--runtime-arg", option)),
        "-b", str(bundle), "-p", str(pid_file(bundle)), "-P", str(conmon_pid_file(bundle)),
        "-l", f"k8s-file:{launch.log_path}", "--log-size-max", str(launch.log_size_max),
        "--exit-dir", str(launch.exit_dir), "--socket-dir-path", str(launch.socket_dir), "--full-attach",
        "--log-level", launch.log_level,
    ]  # fmt: skip
    if launch.stdin:
        args.append("-i")
    if launch.leave_stdin_open:
        args.append("--leave-stdin-open")
    if launch.tty:
        args.append("-t")
    if launch.restore_from is not None:
        # conmon adds --bundle, --pid-file, --detach, --image-path and --work-path (the bundle).
        args += ["--restore", str(launch.restore_from), *(f"--runtime-opt={opt}" for opt in launch.restore_opts)]
    return args


def conmon_scope(cid: str) -> str:
    return f"crishim-conmon-{cid}.scope"


async def launch_container(
    runtime: OciRuntime,
    launch: ConmonLaunch,
    *,
    conmon_path: str = "conmon",
    time_limit: float = 60.0,
    before_start: Callable[[int], Awaitable[None]] | None = None,
) -> ConmonResult:
    """Start conmon, which runs `<runtime> create`; return the container and conmon PIDs.

    Raises RuntimeCommandError with the runtime's own message when create
    fails (missing executable, bad mount...). The container is left CREATED:
    call OciRuntime.start() to run it. `before_start(pid)`, when given, runs while conmon
    waits on its start pipe, before it forks anything: the place to move it into a
    cgroup (under the systemd driver, a scope of its own); if it raises, conmon is
    killed and the error raised.
    """
    exe = shutil.which(conmon_path)
    if exe is None:
        raise Unavailable(f"conmon not found at {conmon_path!r}: install the conmon package")
    for d in (launch.exit_dir, launch.socket_dir, launch.log_path.parent):
        d.mkdir(parents=True, exist_ok=True)
    args = build_args(exe, runtime.base_args(), launch)
    line = await _run_until_synced(args, launch, time_limit, before_start)
    pid, message = _parse_sync(line, await asyncio.to_thread(_log_tail, conmon_log_file(launch.bundle)))
    if pid <= 0:
        what = "restoring" if launch.restore_from is not None else "creating"
        raise RuntimeCommandError(f"{what} container {launch.cid} failed: {message}", returncode=1, stderr=message)
    conmon_pid = await asyncio.to_thread(read_conmon_pid, launch.bundle)
    return ConmonResult(pid=pid, conmon_pid=conmon_pid or 0)


async def _run_until_synced(
    args: list[str], launch: ConmonLaunch, time_limit: float, before_start: Callable[[int], Awaitable[None]] | None
) -> bytes:
    """Spawns conmon and returns the line it wrote on the sync pipe (b"" if it wrote none).

    With `before_start`, conmon waits on its start pipe (conmon reads it before its first
    fork) until that has run (`_hold_until`).
    """
    # conmon's own diagnostics go to a file: a pipe would be held open by
    # the daemonized monitor for the container's whole life.
    log_fd = os.open(conmon_log_file(launch.bundle), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    rfd, wfd = os.pipe()
    start_r, start_w = os.pipe() if before_start else (-1, -1)
    inherited = (wfd, start_r) if before_start else (wfd,)
    try:
        path = launch.path if launch.path is not None else os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        env = {"PATH": path, "_OCI_SYNCPIPE": str(wfd)}
        if before_start:
            env["_OCI_STARTPIPE"] = str(start_r)
        proc = await asyncio.create_subprocess_exec(
            *args, env=env, pass_fds=inherited, start_new_session=True, cwd=str(launch.bundle),
            stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
        )  # fmt: skip
    except BaseException:
        for fd in (rfd, start_w, *inherited):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        os.close(log_fd)
    for fd in inherited:
        os.close(fd)
    try:
        if before_start:
            await _hold_until(before_start, proc, start_w)
        line = await asyncio.wait_for(asyncio.to_thread(_read_sync_line, rfd), time_limit)
    except TimeoutError:
        raise DeadlineExceeded(f"conmon for {launch.cid} reported nothing within {time_limit}s") from None
    finally:
        os.close(rfd)
    # The launched parent exits right after forking the monitor.
    await proc.wait()
    return line


async def _hold_until(
    before_start: Callable[[int], Awaitable[None]], proc: asyncio.subprocess.Process, start_w: int
) -> None:
    """Runs `before_start(conmon's pid)`, then lets the waiting conmon go on.

    If it fails, conmon is killed while it still waits (closing the start pipe alone
    would let it run on) and collected, and the error raised.
    """
    try:
        await before_start(proc.pid)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        os.close(start_w)
        raise
    try:
        os.write(start_w, b"0")
    finally:
        os.close(start_w)


def _read_sync_line(fd: int) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf


def _parse_sync(line: bytes, conmon_stderr: str) -> tuple[int, str]:
    if not line.strip():
        return -1, f"conmon exited without reporting a PID: {conmon_stderr.strip() or 'no output'}"
    try:
        msg = json.loads(line)
        pid = int(msg["data"])
    except (ValueError, KeyError, TypeError):
        return -1, f"conmon sent an unreadable sync message {line!r}"
    return pid, str(msg.get("message") or "").strip()


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-CONMON_LOG_TAIL:]
    except OSError:
        return ""
