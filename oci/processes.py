"""Process trees: finding every process below a conmon, and killing them until gone.

A conmon outlives the daemon by design, so whatever must end one (the start-up sweep,
a removal that finds one still running) kills its whole tree, a `runc create` and the
container's init included, and collects what it can: PID 1 reaps orphans only every
couple of seconds, and the daemon, a subreaper, must reap its own children itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def reap(pid: int) -> int | None:
    """Collect `pid` if it is an exited child of ours; its wait status, or None.

    Never blocks and never waits for other pids, so it cannot steal the
    exit status of a subprocess asyncio is watching.
    """
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if got == pid else None


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, parents first (a runc create and its runc init)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        found.append(current)
        queue += children(current)
    return found


def children(pid: int) -> list[int]:
    """The children of `pid`, from every thread's /proc/PID/task/TID/children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def kill_tree(pid: int, seconds: float = 5.0) -> list[int]:
    """Blocking: SIGKILL `pid` and its descendants, then wait until each is gone; returns them."""
    tree = descendants(pid)
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    wait_gone(tree, seconds)
    return tree


def wait_gone(pids: list[int], seconds: float = 5.0) -> None:
    """Blocking: until every pid is gone, reaping those that are our children.

    As the subreaper the daemon may have inherited a killed tree (collect it, or it stays
    as zombies); after a restart the tree is PID 1's, and a zombie of PID 1's counts as gone.
    """
    deadline = time.monotonic() + seconds
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if still_there(pid)}
        if left:
            time.sleep(0.05)


def still_there(pid: int) -> bool:
    """Alive: a zombie counts as gone, and is reaped when it is an exited child of ours."""
    if reap(pid) is not None:
        return False
    if alive(pid):
        return True
    reap(pid)  # it may have turned into a zombie since the first try: collect it if it is ours
    return False


def alive(pid: int) -> bool:
    """Running or sleeping: neither gone nor a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def naming(argument: str) -> list[int]:
    """Blocking: every live process with `argument` as one whole word of its command line.

    A container ID is 64 hex digits: only the conmon, runc or crun working on that container
    carry it, so this finds, for instance, a `runc restore` whose conmon has exited.
    """
    wanted = argument.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in words and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def collect_namespaced_zombies(rounds: int = 10, interval: float = 0.02) -> None:
    """Blocking: collects the daemon's zombie children that lived in a PID namespace of their own.

    Only processes orphaned from a container become such children (the daemon, conmon and
    the runtimes run in the node's PID namespace), so none is a subprocess someone waits
    for. A child there still exiting is waited for a few rounds; with none, it returns at once.
    """
    for _ in range(rounds):
        pending = False
        for child in children(os.getpid()):
            state, levels = state_and_pid_levels(child)
            if levels < 2:
                continue
            if state == "Z":
                reap(child)
            else:
                pending = True
        if not pending:
            return
        time.sleep(interval)


def state_and_pid_levels(pid: int) -> tuple[str, int]:
    """The process's state letter and how many PID namespaces it has a PID in (its NSpid entries)."""
    state, levels = "", 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                state = line.split()[1]
            elif line.startswith("NSpid:"):
                levels = len(line.split()) - 1
    return state, levels
