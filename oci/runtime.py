"""Async wrapper around runc / crun, one instance per runtime handler.

Every call passes `--root` so each handler keeps its own state directory
(/run/crishim/<handler>). Failures carry the runtime's stderr, which is
where the actual reason is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal as signals
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import processes
from .errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RuntimeCommandError,
    Unavailable,
)
from .features import RuntimeFeatures
from .mounttable import read_mountinfo, unmount
from .processes import reap

EXEC_OUTPUT_CAP = 16 * 1024 * 1024
_PR_SET_CHILD_SUBREAPER = 36
_PROBE_CGROUP = "crishim-probe"
log = logging.getLogger("crishim.oci.runtime")
_NOT_FOUND_MARKERS = ("does not exist", "No such file or directory", "not found")


def become_subreaper() -> None:
    """Make this process the reaper of orphaned descendants.

    When `runc exec` dies (killed on an ExecSync timeout, or crashing) before
    the process it started, that process is orphaned. Without a subreaper it
    goes to PID 1, which on some hosts reaps only every few seconds, so a
    zombie stays visible; as a subreaper the daemon inherits it and reaps it
    at once with `reap(pid)`. A consequence: conmon's daemonized monitor is
    reparented to us too, so whoever sees a container exit calls
    `reap(conmon_pid)` (conmon.py) once conmon has gone.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False


async def _read_capped(stream: asyncio.StreamReader | None, cap: int) -> tuple[bytes, bool]:
    """Read to EOF, keeping at most `cap` bytes; the rest is drained and dropped."""
    if stream is None:
        return b"", False
    buf = bytearray()
    truncated = False
    while chunk := await stream.read(65536):
        room = cap - len(buf)
        if room > 0:
            buf += chunk[:room]
        if len(chunk) > max(room, 0):
            truncated = True
    return bytes(buf), truncated


# Where each runtime's state names its container's init: file, PID key, start-time key.
INIT_PROCESS_KEYS: dict[str, tuple[str, str, str]] = {
    "runc": ("state.json", "init_process_pid", "init_process_start"),
    "crun": ("status", "pid", "process-start-time"),
}


class OciRuntime:
    """One runtime handler: a runc or crun binary with its own state root."""

    def __init__(
        self,
        name: str,
        path: str,
        root: Path,
        kind: Literal["runc", "crun"],
        *,
        systemd_cgroup: bool = False,
        probe_dir: Path | None = None,
    ) -> None:
        self.name = name
        # Where feature probes lay their bundles: on the filesystem that holds real container
        # roots, not the state root (a tmpfs /run is nodev, which breaks the probe's /dev/null,
        # and a 6.1 kernel cannot idmap-mount tmpfs, which would hide crun's idmapped mounts).
        self.probe_dir = probe_dir
        self.path = path
        self.root = Path(root)
        self.kind = kind
        # With the systemd cgroup driver, cgroupsPath is "slice:prefix:name" and the runtime
        # must be told to ask systemd for the scope.
        self.systemd_cgroup = systemd_cgroup
        self._features: RuntimeFeatures | None = None
        self._features_lock = asyncio.Lock()

    def global_args(self) -> list[str]:
        """The runtime's options before the command (its state root, its cgroup driver).

        Built here only: every way of running the runtime starts from `base_args()`,
        the commands run from here, conmon's `--runtime-arg`s and the streaming exec.
        """
        return ["--root", str(self.root)] + (["--systemd-cgroup"] if self.systemd_cgroup else [])

    def base_args(self) -> list[str]:
        return [self.path, *self.global_args()]

    async def _run(self, *args: str, stdin: bytes | None = None, time_limit: float | None = 60.0) -> bytes:
        if shutil.which(self.path) is None:
            raise Unavailable(f"runtime handler {self.name!r}: {self.path} is not an executable")
        self.root.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            *self.base_args(), *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), time_limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DeadlineExceeded(f"{self.name} {args[0]} did not finish within {time_limit}s") from None
        if proc.returncode != 0:
            raise self._error(args, proc.returncode or 1, err.decode(errors="replace"))
        return out

    def _error(self, args: Sequence[str], rc: int, stderr: str) -> Exception:
        text = stderr.strip()
        msg = f"{self.name} {' '.join(args[:1])} failed: {text or f'exit status {rc}'}"
        cid = args[-1] if args else ""
        if any(m in text for m in _NOT_FOUND_MARKERS) and args and args[0] in (
            "state", "start", "kill", "delete", "exec", "update", "pause", "resume", "ps",
        ):  # fmt: skip
            return NotFound(f"{self.name}: container {cid} does not exist ({text})")
        if "already exists" in text or "File exists" in text:
            return AlreadyExists(f"{self.name}: container {cid} already exists ({text})")
        return RuntimeCommandError(msg, returncode=rc, stderr=text)

    async def create(self, cid: str, bundle: Path, pid_file: Path, console_socket: Path | None = None) -> None:
        """`create` directly (conmon normally does this, see conmon.py).

        The container's init inherits the runtime's stdio, so it must not be
        a pipe we read to EOF: stdout goes to /dev/null, stderr to a file.
        """
        args = ["create", "--bundle", str(bundle), "--pid-file", str(pid_file)]
        if console_socket is not None:
            args += ["--console-socket", str(console_socket)]
        if shutil.which(self.path) is None:
            raise Unavailable(f"runtime handler {self.name!r}: {self.path} is not an executable")
        with tempfile.TemporaryFile(dir=self._tmp_dir()) as err_file:
            proc = await asyncio.create_subprocess_exec(
                *self.base_args(), *args, cid,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err_file,
            )  # fmt: skip
            rc = await proc.wait()
            if rc != 0:
                err_file.seek(0)
                text = (await asyncio.to_thread(err_file.read)).decode(errors="replace")
                raise self._error(["create", cid], rc, text)

    async def start(self, cid: str) -> None:
        await self._run("start", cid)

    async def state(self, cid: str) -> dict[str, Any]:
        """The runtime's state JSON (status: created, running, paused, stopped)."""
        out = await self._run("state", cid)
        state: dict[str, Any] = json.loads(out)
        return state

    async def kill(self, cid: str, signal: int | str = signals.SIGTERM, all: bool = False) -> None:
        sig = signal if isinstance(signal, str) else str(int(signal))
        args = ["kill"] + (["--all"] if all else []) + [cid, sig]
        await self._run(*args)

    async def delete(self, cid: str, force: bool = False) -> None:
        await self._run("delete", *(["--force"] if force else []), cid)

    async def update(self, cid: str, resources: dict[str, Any]) -> None:
        """Apply an OCI linux.resources object to a running container."""
        await self._run("update", "--resources", "-", cid, stdin=json.dumps(resources).encode())

    async def pause(self, cid: str) -> None:
        await self._run("pause", cid)

    async def resume(self, cid: str) -> None:
        await self._run("resume", cid)

    async def ps(self, cid: str) -> list[int]:
        out = await self._run("ps", "--format", "json", cid)
        pids = json.loads(out or b"[]") or []
        return [int(p) for p in pids]

    async def list_containers(self) -> list[dict[str, Any]]:
        out = await self._run("list", "--format", "json")
        items: list[dict[str, Any]] = json.loads(out or b"[]") or []
        return items

    def exec_command(self, cid: str, cmd: Sequence[str], *, tty: bool, pid_file: Path | None = None) -> list[str]:
        """The command line of an interactive exec; the caller runs it on its own pipes or pty.

        runc and crun take the process environment, cwd and user from the container's
        own spec when given only the arguments, as `kubectl exec` expects. The runtime
        writes the exec'd process's PID to `pid_file`, for `collect_exec_orphan` after it.
        """
        pid_args = ["--pid-file", str(pid_file)] if pid_file is not None else []
        return [*self.base_args(), "exec", *(["--tty"] if tty else []), *pid_args, cid, *cmd]

    def exec_scratch(self) -> tempfile.TemporaryDirectory[str]:
        """A private directory for one exec's files (its process.json, its pid file)."""
        return tempfile.TemporaryDirectory(prefix="exec-", dir=self._tmp_dir())

    async def exec(
        self,
        cid: str,
        process: dict[str, Any],
        *,
        time_limit: float | None = None,
        output_cap: int = EXEC_OUTPUT_CAP,
    ) -> ExecResult:
        """Run `process` in the container, capturing its output (ExecSync).

        On timeout the exec'd process is killed and reaped (its runc parent
        reaps it; if runc had to be killed first, we do: see become_subreaper)
        and DeadlineExceeded is raised.
        """
        if process.get("terminal"):
            raise InvalidArgument("ExecSync cannot allocate a terminal")
        with self.exec_scratch() as tmp:
            pjson, pidf = Path(tmp, "process.json"), Path(tmp, "pid")
            await asyncio.to_thread(pjson.write_text, json.dumps(process))
            if shutil.which(self.path) is None:
                raise Unavailable(f"runtime handler {self.name!r}: {self.path} is not an executable")
            proc = await asyncio.create_subprocess_exec(
                *self.base_args(), "exec", "--process", str(pjson), "--pid-file", str(pidf), cid,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            readers = asyncio.gather(_read_capped(proc.stdout, output_cap), _read_capped(proc.stderr, output_cap))
            try:
                await asyncio.wait_for(proc.wait(), time_limit)
            except TimeoutError:
                await self._kill_exec(proc, pidf)
                readers.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await readers
                raise DeadlineExceeded(
                    f"exec in container {cid} did not finish within {time_limit}s; the process was killed"
                ) from None
            except asyncio.CancelledError:
                # The caller went away (a gRPC deadline shorter than the exec timeout):
                # the exec'd process must not outlive the call either.
                await asyncio.shield(self._kill_exec(proc, pidf))
                readers.cancel()
                raise
            try:
                # Output closes when the last holder of the pipes exits; a
                # background child of the exec'd process may keep it open.
                (out, out_t), (err, err_t) = await asyncio.wait_for(asyncio.shield(readers), 2.0)
            except TimeoutError:
                readers.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await readers
                out, out_t, err, err_t = b"", True, b"", True
            await collect_exec_orphan(read_pid(pidf))
        rc = proc.returncode if proc.returncode is not None else -1
        if rc != 0 and b"does not exist" in err and not out:
            raise NotFound(f"{self.name}: container {cid} does not exist ({err.decode(errors='replace').strip()})")
        return ExecResult(rc if rc >= 0 else 128 - rc, out, err, out_t, err_t)

    def signal_init(self, cid: str, signal: int) -> bool:
        """Blocking: sends `signal` to the container's init itself, without running the runtime.

        Possible where the state names the process by its PID and its start time, as runc's
        state.json and crun's status file both do (the start time is how either tells a
        reused PID): a pidfd pins the process, so the signal cannot reach another one. This
        saves a runtime command (8-12 ms here) on every stop of a pod's infra container.
        True when sent or when that process is gone already; False when the caller must run
        `kill` (no state, an unreadable one). It does not thaw a frozen cgroup v1 (as
        `runc kill` does not): only for containers never paused, such as an infra container.
        """
        init = self._init_process(cid)
        if init is None:
            return False
        pid, started = init
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        try:
            if _start_time(pid) != started:
                return True  # the PID names another process now: the init is gone
            signals.pidfd_send_signal(pidfd, signal)
        except ProcessLookupError:
            pass  # exited meanwhile
        finally:
            os.close(pidfd)
        return True

    def _init_process(self, cid: str) -> tuple[int, int] | None:
        """The init's PID and start time (clock ticks since boot) as the runtime's state records them."""
        file, pid_key, start_key = INIT_PROCESS_KEYS[self.kind]
        try:
            state = json.loads((self.root / cid / file).read_bytes())
            pid, started = int(state[pid_key]), int(state[start_key])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (pid, started) if pid > 0 else None

    def has_state(self, cid: str) -> bool:
        """Whether the runtime keeps state for `cid` (runc and crun alike: a directory under root).

        Without it every command on `cid` would only answer "does not exist", so a caller
        can skip running one (a process start costs milliseconds here).
        """
        return (self.root / cid).exists()

    def release_restore_root(self, cid: str) -> bool:
        """Blocking: unmounts the bind of the rootfs that `runc restore` makes at
        <root>/<cid>/criu-root for CRIU, and removes the directory. True if one was there.

        runc undoes it when it ends; a restore that was killed (the daemon killed with -9
        mid-restore, a restore past its time limit) leaves it mounted in the host's mount
        namespace, where it would outlive the container and pin its rootfs.
        """
        target = self.root / cid / "criu-root"
        if not target.is_dir():
            return False
        unmount(target, stacked=True)
        with contextlib.suppress(OSError):
            target.rmdir()
        return True

    def remove_unloadable_state(self, cid: str) -> bool:
        """Blocking: removes the state directory of `cid` if the runtime can no longer load it.

        A delete racing another can leave it half removed, without crun's config.json or
        runc's state.json; every later command then fails on it. True if it was removed.
        """
        state_dir = self.root / cid
        if not state_dir.is_dir() or any((state_dir / f).exists() for f in ("config.json", "state.json")):
            return False
        shutil.rmtree(state_dir, True)
        return True

    def _tmp_dir(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        return str(self.root)

    async def _kill_exec(self, proc: asyncio.subprocess.Process, pid_file: Path) -> None:
        pid = read_pid(pid_file)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signals.SIGKILL)
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await collect_exec_orphan(pid)

    async def features(self) -> RuntimeFeatures:
        """What this handler really supports, probed once by creating a tiny container."""
        async with self._features_lock:
            if self._features is None:
                self._features = await self._probe()
            return self._features

    async def _probe(self) -> RuntimeFeatures:
        rro = await self._probe_mount(["rbind", "rro"], None, lambda opts: "ro" in opts)
        idmap = await self._probe_mount(
            ["rbind", "idmap"], [{"containerID": 0, "hostID": 65534, "size": 1}], lambda opts: "idmapped" in opts
        )
        # A pod user namespace needs idmapped mounts (volumes owned by the mapped root) and a
        # runtime that joins the pod's pre-made netns from inside the new user namespace;
        # runc 1.1.5 has neither (setns into the netns fails with EPERM), crun 1.8.1 both.
        return RuntimeFeatures(recursive_read_only=rro, idmap_mounts=idmap, user_namespaces=idmap)

    async def _probe_mount(
        self, options: list[str], mapping: list[dict[str, int]] | None, check: Callable[[tuple[str, ...]], bool]
    ) -> bool:
        """Create (never start) a container with one bind mount; read its mount options."""
        cid = f"crishim-probe-{os.getpid()}-{os.urandom(4).hex()}"
        if self.probe_dir is not None:
            await asyncio.to_thread(self.probe_dir.mkdir, parents=True, exist_ok=True)
        probe_parent = str(self.probe_dir) if self.probe_dir is not None else self._tmp_dir()
        with tempfile.TemporaryDirectory(prefix="probe-", dir=probe_parent) as tmp:
            bundle = Path(tmp)
            rootfs = bundle / "rootfs"
            for d in ("dev", "proc", "src", "dst"):
                (rootfs / d).mkdir(parents=True)
            (rootfs / "true").touch(mode=0o755)
            mount: dict[str, Any] = {"destination": "/dst", "type": "bind", "source": str(rootfs / "src"),
                                     "options": options}  # fmt: skip
            if mapping:
                mount["uidMappings"] = mapping
                mount["gidMappings"] = mapping
            spec = {
                "ociVersion": "1.0.2",
                "process": {"args": ["/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/"]},
                "root": {"path": "rootfs", "readonly": True},
                "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}, mount],
                "linux": {
                    "namespaces": [{"type": "mount"}, {"type": "pid"}],
                    "cgroupsPath": self._probe_cgroups_path(cid),
                },
            }
            await asyncio.to_thread((bundle / "config.json").write_text, json.dumps(spec))
            try:
                await asyncio.wait_for(self.create(cid, bundle, bundle / "pid"), 20.0)
            except Exception as exc:  # noqa: BLE001 - any refusal means "not supported"
                log.info("%s: no support for mount options %s: %s", self.name, ",".join(options), exc)
                await self._discard_probe(cid, bundle / "pid")
                return False
            try:
                opts = await asyncio.to_thread(_mount_options, bundle / "pid", "/dst")
                return opts is not None and check(opts)
            finally:
                await self._discard_probe(cid, bundle / "pid")

    def _probe_cgroups_path(self, cid: str) -> str:
        """A throw-away cgroup in the form the handler's cgroup driver expects.

        With --systemd-cgroup the runtime refuses a plain path: it wants slice:prefix:name,
        and deletes the transient scope itself on `delete`.
        """
        if self.systemd_cgroup:
            return f"system.slice:{_PROBE_CGROUP}:{cid}"
        return f"/{_PROBE_CGROUP}/{cid}"

    async def _discard_probe(self, cid: str, pid_file: Path) -> None:
        init_pid = read_pid(pid_file)
        with contextlib.suppress(Exception):
            await self.delete(cid, force=True)
        if init_pid is not None:
            # The created container's init was the runtime's child; with the runtime gone it is
            # ours (the daemon is a subreaper): collect it, or it stays a zombie.
            for _ in range(50):
                if _collected(init_pid):
                    break
                await asyncio.sleep(0.02)
        if self.systemd_cgroup:
            return
        # The cgroup can stay busy for a moment after the init is killed.
        for _ in range(50):
            if await asyncio.to_thread(_remove_cgroup_dirs, f"{_PROBE_CGROUP}/{cid}"):
                break
            await asyncio.sleep(0.02)
        # The shared parent goes too once empty; a probe running beside us keeps it (EBUSY).
        await asyncio.to_thread(_remove_cgroup_dirs, _PROBE_CGROUP)


def _collected(pid: int) -> bool:
    """True once `pid` is reaped, or when it is no child of ours (someone else collects it)."""
    try:
        got, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return got == pid


def _mount_options(pid_file: Path, target: str) -> tuple[str, ...] | None:
    """The per-mount options of `target` in the mount namespace of the pid in `pid_file`."""
    pid = read_pid(pid_file)
    if pid is None:
        return None
    try:
        entries = read_mountinfo(f"/proc/{pid}/mountinfo")
    except OSError:
        return None
    return next((entry.options for entry in entries if entry.point == target), None)


def _remove_cgroup_dirs(rel: str, base: Path = Path("/sys/fs/cgroup")) -> bool:
    """rmdir `rel` (and its parent if empty) in every hierarchy; True when none is left."""
    left = False
    for hierarchy in [base, *(p for p in base.iterdir() if p.is_dir())] if base.is_dir() else []:
        target = hierarchy / rel
        if not target.is_dir():
            continue
        try:
            target.rmdir()
            with contextlib.suppress(OSError):
                target.parent.rmdir()
        except OSError:
            left = True
    return not left


def read_pid(path: Path) -> int | None:
    """The PID a runtime or conmon wrote to `path`; None if the file is absent or not a number."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


async def collect_exec_orphan(pid: int | None) -> None:
    """Ends and collects what an exec's runtime process left behind; a no-op otherwise.

    The exec'd process is orphaned to the daemon, a subreaper, when the runtime process goes
    first: runc killed on a timeout or at a session's end; nothing can wait for it any
    more, so one still running is killed. crun does the same whenever the command cannot be
    executed (a masked or missing binary): it reports the error and exits without collecting
    its child, and writes no PID file (`pid` None), so zombies of ours in a container's PID
    namespace are collected instead. Left alone such a zombie stays, and in a pod that
    shares one PID namespace it holds up the pause process's exit, so StopPodSandbox.
    """
    if pid is None:
        await asyncio.to_thread(processes.collect_namespaced_zombies)
        return
    killed = False
    for _ in range(50):
        if reap(pid) is not None:
            return
        state = _child_state(pid)
        if state is None:
            return  # not ours: the runtime collected it
        if state != "Z" and not killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signals.SIGKILL)
            killed = True
        await asyncio.sleep(0.02)


def _child_state(pid: int) -> str | None:
    """The state letter (/proc/PID/stat: R, S, Z...) of `pid` if it is a child of ours; None otherwise."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return state if int(ppid) == os.getpid() else None


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[19])
