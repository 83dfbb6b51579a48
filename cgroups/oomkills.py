"""Which processes the kernel OOM-killed, from the kernel's own record of each kill.

A cgroup's counters (`oom_kill` in v2 memory.events, in v1 memory.oom_control) answer
for as long as the cgroup exists, and the daemon reads them when it records an exit.
Under the systemd driver the cgroup does not wait for that: systemd stops a container's
scope and removes its cgroup the moment the last process exits, so the counters vanish
with the OOM-killed process (and conmon 2.1.6 stops watching memory.events after the
first event that is not an OOM kill). The kernel also writes every kill to its log,
with the victim's PID and (rate-limited to ten per five seconds) its memory cgroup,
before the victim can exit: draining /dev/kmsg after an exit therefore always finds
the kill that caused it.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import re
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("crishim.cgroups.oom")

KMSG = "/dev/kmsg"
# One /dev/kmsg read returns one record; the kernel refuses a buffer shorter than it (EINVAL).
_RECORD_MAX = 16384
# "oom-kill:constraint=CONSTRAINT_MEMCG,...,oom_memcg=/a,task_memcg=/a/b,task=sh,pid=1234,uid=0"
_SUMMARY = re.compile(r"\boom-kill:.*,task_memcg=(?P<memcg>[^,]*),task=.*,pid=(?P<pid>\d+),")
# "Memory cgroup out of memory: Killed process 1234 (sh) total-vm:...", "Out of memory: Killed process ..."
_KILLED = re.compile(r"\bout of memory(?: \([a-z_]+\))?: Killed process (?P<pid>\d+) ", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class OomKill:
    """One process the OOM killer killed."""

    pid: int  # in the host's PID namespace
    memcg: str | None  # its memory cgroup ("/kubepods.slice/.../crishim-ID.scope"), when the log names it
    at_ns: int  # wall-clock time of the kill


def parse_kmsg_record(record: str, boot_wall_ns: int) -> OomKill | None:
    """An OOM kill from one /dev/kmsg record ("PRIO,SEQ,USEC,FLAGS;MESSAGE"), else None."""
    header, sep, message = record.partition(";")
    if not sep:
        return None
    message = message.split("\n", 1)[0]  # continuation lines (" KEY=VALUE") follow the message
    fields = header.split(",")
    try:
        at_ns = boot_wall_ns + int(fields[2]) * 1000
    except (IndexError, ValueError):
        return None
    if m := _SUMMARY.search(message + ","):
        return OomKill(int(m["pid"]), m["memcg"] or None, at_ns)
    if m := _KILLED.search(message):
        return OomKill(int(m["pid"]), None, at_ns)
    return None


def split_records(text: str) -> list[str]:
    """/dev/kmsg gives one record per read; a saved log (and the tests) hold several, one a line.

    Continuation lines of a record start with a space.
    """
    records: list[str] = []
    for line in text.splitlines():
        if line.startswith(" ") and records:
            records[-1] += "\n" + line
        elif line:
            records.append(line)
    return records


def _boot_wall_ns() -> int:
    """Wall-clock time of boot: kmsg stamps records in microseconds since then."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class OomKillLog:
    """The OOM kills the kernel logged, read from /dev/kmsg as they are asked about.

    Opened at start-up, it starts at the oldest record the kernel still holds, so kills
    that happened while the daemon was down are found too. Thread-safe: exits are
    recorded from worker threads.
    """

    # PID matches only count kills from this long before the process was created: the
    # kmsg clock and the wall clock drift a little, and PIDs are reused.
    PID_SLACK_NS = 2_000_000_000

    def __init__(self, path: str = KMSG, keep: int = 512) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._boot_wall_ns = _boot_wall_ns()
        self._kills: collections.deque[OomKill] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str = KMSG) -> OomKillLog | None:
        """None when the kernel log cannot be read here (no CAP_SYSLOG, no /dev/kmsg)."""
        try:
            return cls(path)
        except OSError as exc:
            log.info("kernel log %s cannot be read (%s): OOM kills are known from cgroup counters only", path, exc)
            return None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _drain(self) -> None:
        while self._fd >= 0:
            try:
                data = os.read(self._fd, _RECORD_MAX)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # records were overwritten before we read them: go on with the next
                raise
            if not data:
                return
            for record in split_records(data.decode(errors="replace")):
                kill = parse_kmsg_record(record, self._boot_wall_ns)
                if kill is not None:
                    self._kills.append(kill)

    def killed(self, cgroup: str, pid: int, since_ns: int) -> bool:
        """Whether a process of cgroup `cgroup` (relative path), or `pid` since `since_ns`, was OOM-killed.

        A matching record is consumed, so a reused PID cannot match it again.
        """
        prefix = cgroup.rstrip("/") + "/"
        with self._lock:
            self._drain()
            hits = [
                k
                for k in self._kills
                if (cgroup and k.memcg is not None and (k.memcg == cgroup or k.memcg.startswith(prefix)))
                or (pid > 0 and k.pid == pid and k.at_ns >= since_ns - self.PID_SLACK_NS)
            ]
            for k in hits:
                self._kills.remove(k)
        return bool(hits)
