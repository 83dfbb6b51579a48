"""A pod's shared PID namespace, held by catatonit instead of a pause container.

A pod whose containers share one PID namespace needs a process to be its PID 1:
to keep the namespace alive between containers and to reap the orphans they
leave. Its other namespaces are pinned by bind mounts (runtime/sandbox/pinned.py),
so that process needs nothing of a container but the PID namespace. Running it
through the OCI runtime under conmon cost a `runc create` and a `runc start`
(20-30 ms on runc, half that on crun) on the path of every RunPodSandbox, and a
kill and a `runc delete` on StopPodSandbox's.

Here util-linux's `unshare` forks catatonit (Podman's pause process) into a new
PID and mount namespace, in the pod's network, IPC and UTS namespaces (it is
started from the thread that pinned them). Before catatonit runs, the child is
confined as far as a process that does nothing needs:
  * its root is a directory of the daemon's holding only catatonit, mode 0711;
  * it runs as uid and gid 65535 with no supplementary groups, so the switch
    from root leaves it no capability;
  * catatonit is not readable by that uid, so the kernel makes the process
    non-dumpable: no process of the pod can ptrace it, or read its /proc files
    (root, cwd, environ, fds), whatever uid it runs as.
`unshare` stays as its parent (the daemon's child, which the daemon reaps) and
exits with it; `--kill-child` ends catatonit should `unshare` be killed. Both
carry CRISHIM_PID_HOLDER=<holder directory>:<sandbox ID> in their environment,
which tells a restarted daemon its holders from recycled PIDs and from other
daemons' (the start-up sweep ends those no record names).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from crishim.oci import processes

ENV_TAG = "CRISHIM_PID_HOLDER"
HOLDER_ID = 65535  # uid and gid: Kubernetes' "nobody", as the upstream pause image runs
BINARY = "catatonit"
# Seconds from the spawn to catatonit running. An unshare that fails exits, and is seen at once:
# the limit only ends a hang. A loaded node (a busy or emulated one) can take several seconds to
# fork and exec: the limit is well within the two minutes a kubelet gives a CRI call.
READY_WITHIN = 60.0


@dataclass(frozen=True, slots=True)
class Holder:
    """A running holder: catatonit, PID 1 of the pod's namespace, and its `unshare` parent."""

    pid: int
    parent_pid: int


@dataclass(frozen=True, slots=True)
class HolderRoot:
    """The directory every holder of one daemon has as its root, and the unshare to start them with."""

    directory: Path
    unshare: str

    def tag(self, sandbox_id: str) -> str:
        return tag(self.directory, sandbox_id)


def tag(directory: Path, sandbox_id: str) -> str:
    """What the holder of `sandbox_id` started for `directory` carries in its environment."""
    return f"{directory}:{sandbox_id}"


def prepare(directory: Path) -> HolderRoot | None:
    """Puts catatonit into `directory`; None (pods keep a pause container) where it cannot run there.

    It needs util-linux's unshare and a statically linked catatonit, the only file the
    holder's root holds (Debian's is static).
    """
    unshare, source = shutil.which("unshare"), shutil.which(BINARY)
    if unshare is None or source is None or not is_static(Path(source)):
        return None
    directory.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(directory, 0o711)
    target = directory / BINARY
    if not _same_file_content(Path(source), target):
        partial = directory / f".{BINARY}.partial"
        shutil.copyfile(source, partial)
        os.chmod(partial, 0o711)  # executable, not readable, by the holder's uid: see the module's docstring
        os.replace(partial, target)
    return HolderRoot(directory, unshare)


def is_static(path: Path) -> bool:
    """Whether the ELF file at `path` (64-bit, little-endian) has no program interpreter."""
    pt_interp = 3
    try:
        with path.open("rb") as f:
            header = f.read(64)
            if len(header) < 64 or header[:6] != b"\x7fELF\x02\x01":
                return False
            (phoff,) = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    if len(table) < phentsize * phnum:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def _same_file_content(source: Path, target: Path) -> bool:
    try:
        return target.stat().st_size == source.stat().st_size and target.read_bytes() == source.read_bytes()
    except OSError:
        return False


def spawn(root: HolderRoot, sandbox_id: str, log_path: Path) -> Holder:
    """Blocking: starts the holder in the calling thread's namespaces; returns once catatonit runs.

    Raises OSError, with what unshare wrote, if it does not; nothing is left running then.
    """
    argv = [
        root.unshare, "--pid", "--fork", "--kill-child=SIGKILL", "--mount", "--propagation", "private",
        f"--root={root.directory}", "--wd=/", f"--setgid={HOLDER_ID}", f"--setuid={HOLDER_ID}",
        f"/{BINARY}", "-P",
    ]  # fmt: skip
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        parent = os.posix_spawn(
            root.unshare,
            argv,
            {ENV_TAG: root.tag(sandbox_id)},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ],
            setsid=True,  # a signal to the daemon's process group must not reach it
        )
    finally:
        os.close(out)
    try:
        return Holder(_running_child(parent, log_path), parent)
    except BaseException:
        processes.kill_tree(parent)
        raise


def _running_child(parent: int, log_path: Path) -> int:
    """The PID of `parent`'s child once it runs catatonit (confined by then: unshare confines, then execs)."""
    deadline = time.monotonic() + READY_WITHIN
    delay = 0.0002
    while True:
        child = _first_child(parent)
        if child and _cmdline(child)[:1] == [f"/{BINARY}".encode()]:
            return child
        if processes.reap(parent) is not None or not processes.alive(parent):
            raise OSError(f"the PID namespace holder did not start: {_tail(log_path) or 'unshare exited'}")
        if time.monotonic() > deadline:
            raise OSError(f"the PID namespace holder did not start within {READY_WITHIN:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _first_child(pid: int) -> int:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    return int(children[0]) if children else 0


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").strip()[-500:]
    return ""


def _tagged(pid: int, tag: str) -> bool:
    """Whether `pid` carries the holder tag `tag` (not a recycled PID, not another pod's)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{ENV_TAG}={tag}".encode() in environ


def is_holder_parent(pid: int, tag: str) -> bool:
    """Whether `pid` is still the `unshare` of the holder tagged `tag` (and not a zombie)."""
    cmdline = _cmdline(pid)
    return bool(cmdline) and cmdline[0].endswith(b"unshare") and processes.alive(pid) and _tagged(pid, tag)


def kill(holder: Holder, tag: str) -> None:
    """Blocking: SIGKILL to catatonit, which ends every process left in the namespace; gone is fine.

    Checked through a pidfd, so a recycled PID is never signalled. `unshare` then exits
    by itself; the caller waits for that (the exit monitor, or end()).
    """
    for pid in (holder.pid, holder.parent_pid):
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            continue
        try:
            if _tagged(pid, tag):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                return
        finally:
            os.close(fd)


def end(holder: Holder, tag: str, seconds: float = 5.0) -> None:
    """Blocking: kill() and wait until both processes are gone, reaping `unshare` if it is the daemon's."""
    kill(holder, tag)
    processes.wait_gone([holder.parent_pid, holder.pid], seconds)


def parents_for(directory: Path) -> dict[str, list[int]]:
    """Every live holder's `unshare` started for `directory` (one daemon's holders), by sandbox ID."""
    prefix = f"{ENV_TAG}={directory}:".encode()
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        cmdline = _cmdline(pid)
        if not cmdline or not cmdline[0].endswith(b"unshare"):
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(prefix):
                found.setdefault(item[len(prefix) :].decode(errors="replace"), []).append(pid)
    return found
