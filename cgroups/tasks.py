"""What the processes of one cgroup hold open: file descriptors, sockets, the open-file limit.

cAdvisor counts these per container from /proc, for the processes listed in the
cgroup's own cgroup.procs (not its children's), and reads the soft open-file limit
of the container's first process. A process can exit between the listing and the
read; it then simply counts for nothing, as it would a moment later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .files import read_opt_text

PROC = "/proc"


@dataclass(frozen=True, slots=True)
class TaskCounts:
    processes: int
    file_descriptors: int
    sockets: int


def cgroup_pids(cgroup_dir: str) -> list[int]:
    """The processes of the cgroup itself; [] when it is gone."""
    text = read_opt_text(os.path.join(cgroup_dir, "cgroup.procs")) or ""
    return [int(pid) for pid in text.split()]


def count_tasks(cgroup_dir: str, proc: str = PROC) -> TaskCounts:
    """Processes of the cgroup, and the descriptors and sockets they hold between them."""
    pids = cgroup_pids(cgroup_dir)
    fds = sockets = 0
    for pid in pids:
        fd_dir = os.path.join(proc, str(pid), "fd")
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue  # exited since the listing
        fds += len(names)
        for name in names:
            try:
                if os.readlink(os.path.join(fd_dir, name)).startswith("socket:"):
                    sockets += 1
            except OSError:
                continue
    return TaskCounts(len(pids), fds, sockets)


def max_open_files(pid: int, proc: str = PROC) -> int | None:
    """The soft "Max open files" limit of `pid`; None when it is unlimited or the process is gone."""
    if pid <= 0:
        return None
    try:
        text = read_opt_text(os.path.join(proc, str(pid), "limits")) or ""
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files") :].split()[0]
            return int(soft) if soft.isdigit() else None
    return None
