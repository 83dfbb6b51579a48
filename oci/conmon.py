"""Launching conmon, the per-container monitor, and reading what it leaves behind.

conmon runs `<runtime> create`, holds the container's stdio, writes CRI-format
logs (k8s-file driver), serves the attach socket and writes the exit code to
`<exit_dir>/<cid>`. It must outlive the daemon: we start it in a session of
its own and without `--sync`, so the process we spawn forks the real
monitor and exits at once; we only wait for that short-lived parent. The
monitor is then reparented to the nearest subreaper (the daemon, when it
called runtime.become_subreaper(); else PID 1): call runtime.reap(conmon_pid)
after the container's exit is seen.

The container PID (or runc's error) comes back on the sync pipe whose fd
number conmon reads from $_OCI_SYNCPIPE: one JSON line, {"data": PID} or
{"data": -1, "message": "..."} with --api-version 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import DeadlineExceeded, Internal, InvalidArgument, RuntimeCommandError, Unavailable

DEFAULT_LOG_SIZE_MAX = -1  # conmon: no limit; the kubelet rotates logs


@dataclass(frozen=True, slots=True)
class ConmonResult:
    pid: int  # the container's init process
    conmon_pid: int


def attach_socket_path(bundle: Path) -> Path:
    """With --full-attach conmon listens on <bundle>/attach (no sun_path truncation)."""
    return Path(bundle) / "attach"


def exit_file_path(exit_dir: Path, cid: str) -> Path:
    return Path(exit_dir) / cid


def read_exit_code(path: Path) -> int | None:
    """The exit code conmon wrote, or None while the container has not exited."""
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError as e:
        raise Internal(f"conmon exit file {path} holds {text!r}, not an exit code") from e


def _write_ctl(ctl_fifo: Path, line: str) -> None:
    # O_NONBLOCK: fail at once (ENXIO) when no conmon holds the FIFO open
    # rather than hanging on a dead container.
    try:
        fd = os.open(ctl_fifo, os.O_WRONLY | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise InvalidArgument(f"no conmon control FIFO at {ctl_fifo}: the container has no monitor") from e
    except OSError as e:
        raise Internal(f"conmon is not listening on {ctl_fifo}: {e.strerror}") from e
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def reopen_log(ctl_fifo: Path) -> None:
    """Ask conmon to reopen its log file (after the kubelet rotated it)."""
    await asyncio.to_thread(_write_ctl, Path(ctl_fifo), "2 0 0\n")


def build_args(
    *,
    conmon_path: str,
    cid: str,
    name: str,
    runtime_path: str,
    runtime_root: Path,
    bundle: Path,
    pid_file: Path,
    log_path: Path,
    exit_dir: Path,
    socket_dir: Path,
    conmon_pid_file: Path,
    stdin: bool = False,
    tty: bool = False,
    log_size_max: int = DEFAULT_LOG_SIZE_MAX,
    log_level: str = "info",
    leave_stdin_open: bool = False,
    runtime_args: tuple[str, ...] = (),
) -> list[str]:
    args = [
        conmon_path, "--api-version", "1",
        "-c", cid, "-n", name, "-u", cid,
        "-r", runtime_path, "--runtime-arg", f"--root={runtime_root}",
        *(arg for extra in runtime_args for arg in ("--runtime-arg", extra)),
        "-b", str(bundle), "-p", str(pid_file), "-P", str(conmon_pid_file),
        "-l", f"k8s-file:{log_path}", "--log-size-max", str(log_size_max),
        "--exit-dir", str(exit_dir), "--socket-dir-path", str(socket_dir), "--full-attach",
        "--log-level", log_level,
    ]  # fmt: skip
    if stdin:
        args.append("-i")
    if leave_stdin_open:
        # CRI stdin_once=false: a client leaving attach must not close the container's stdin.
        args.append("--leave-stdin-open")
    if tty:
        args.append("-t")
    return args


def scope_args(cid: str, slice_: str) -> list[str]:
    """Runs conmon in a transient scope of its own inside the pod's slice.

    Under the systemd driver every process belongs to a unit: conmon is accounted to
    the pod (CRI-O's `conmon_cgroup = "pod"`) instead of to crishim.service, and it
    outlives a restart of the service. The scope ends, and --collect unloads it even
    after a failure, once conmon exits.
    """
    return ["systemd-run", "--scope", "--quiet", "--collect", f"--unit={conmon_scope(cid)}", f"--slice={slice_}", "--"]


def conmon_scope(cid: str) -> str:
    return f"crishim-conmon-{cid}.scope"


async def launch_container(
    *,
    cid: str,
    name: str,
    runtime_path: str,
    runtime_root: Path,
    bundle: Path,
    log_path: Path,
    exit_dir: Path,
    socket_dir: Path,
    stdin: bool = False,
    tty: bool = False,
    log_size_max: int = DEFAULT_LOG_SIZE_MAX,
    conmon_path: str = "conmon",
    time_limit: float = 60.0,
    leave_stdin_open: bool = False,
    runtime_args: tuple[str, ...] = (),
    systemd_slice: str | None = None,
) -> ConmonResult:
    """Start conmon, which runs `<runtime> create`; return the container and conmon PIDs.

    Raises RuntimeCommandError with the runtime's own message when create
    fails (missing executable, bad mount...). The container is left CREATED:
    call OciRuntime.start() to run it.
    """
    exe = shutil.which(conmon_path)
    if exe is None:
        raise Unavailable(f"conmon not found at {conmon_path!r}: install the conmon package")
    bundle, exit_dir, socket_dir = Path(bundle), Path(exit_dir), Path(socket_dir)
    for d in (exit_dir, socket_dir, Path(log_path).parent):
        d.mkdir(parents=True, exist_ok=True)
    pid_file, conmon_pid_file = bundle / "pidfile", bundle / "conmon.pid"
    args = build_args(
        conmon_path=exe, cid=cid, name=name, runtime_path=runtime_path, runtime_root=runtime_root,
        bundle=bundle, pid_file=pid_file, log_path=Path(log_path), exit_dir=exit_dir, socket_dir=socket_dir,
        conmon_pid_file=conmon_pid_file, stdin=stdin, tty=tty, log_size_max=log_size_max,
        leave_stdin_open=leave_stdin_open, runtime_args=runtime_args,
    )  # fmt: skip
    if systemd_slice:
        args = scope_args(cid, systemd_slice) + args
    conmon_log = bundle / "conmon.log"
    # conmon's own diagnostics go to a file: a pipe would be held open by
    # the daemonized monitor for the container's whole life.
    log_fd = os.open(conmon_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    rfd, wfd = os.pipe()
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "_OCI_SYNCPIPE": str(wfd)}
        proc = await asyncio.create_subprocess_exec(
            *args, env=env, pass_fds=(wfd,), start_new_session=True, cwd=str(bundle),
            stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
        )  # fmt: skip
    except BaseException:
        os.close(rfd)
        os.close(wfd)
        raise
    finally:
        os.close(log_fd)
    os.close(wfd)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(_read_sync_line, rfd), time_limit)
    except TimeoutError:
        raise DeadlineExceeded(f"conmon for {cid} reported nothing within {time_limit}s") from None
    finally:
        os.close(rfd)
    # The launched parent exits right after forking the monitor.
    await proc.wait()
    pid, message = _parse_sync(line, await asyncio.to_thread(_read_text, conmon_log))
    if pid <= 0:
        raise RuntimeCommandError(f"creating container {cid} failed: {message}", returncode=1, stderr=message)
    conmon_pid = await asyncio.to_thread(_read_int_file, conmon_pid_file)
    return ConmonResult(pid=pid, conmon_pid=conmon_pid or 0)


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


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4096:]
    except OSError:
        return ""


def _read_int_file(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None
