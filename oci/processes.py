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

from .runtime import reap


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, parents first (a runc create and its runc init)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue += [int(child) for child in (task / "children").read_text().split()]
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
        left = {pid for pid in left if reap(pid) is None and alive(pid)}
        if left:
            time.sleep(0.05)


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
