"""Watches conmon processes and records container exits.

conmon writes the exit code to `<exits_dir>/<id>` and then exits itself; a
pidfd on conmon becomes readable at that moment, so the daemon learns of an
exit without polling. After a daemon restart the same watch is re-armed on
the conmon processes still alive, and exits that happened meanwhile are read
from their files (see runtime/recover.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

log = logging.getLogger("crishim.monitor")

OnExit = Callable[[str], Awaitable[None]]


class ExitMonitor:
    def __init__(self, on_exit: OnExit) -> None:
        self._on_exit = on_exit
        self._fds: dict[str, int] = {}
        self._waiters: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def watch(self, object_id: str, conmon_pid: int) -> None:
        """Calls on_exit(object_id) once conmon `conmon_pid` has exited (at once if it already has)."""
        if object_id in self._fds:
            return
        loop = asyncio.get_running_loop()
        self._waiters.setdefault(object_id, asyncio.Event())
        if conmon_pid <= 0:
            # No conmon ever ran (a container made from a checkpoint and never restored):
            # nothing to wait for, and pidfd_open(0) would be EINVAL.
            self._fire(object_id)
            return
        try:
            fd = os.pidfd_open(conmon_pid)
        except ProcessLookupError:
            self._fire(object_id)
            return
        self._fds[object_id] = fd
        loop.add_reader(fd, self._fire, object_id)

    def _fire(self, object_id: str) -> None:
        fd = self._fds.pop(object_id, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            # As the subreaper, the daemon is conmon's parent: reap it now, or it stays a zombie.
            # After a restart conmon is someone else's child (ECHILD) and PID 1 reaps it.
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
            os.close(fd)
        task = asyncio.get_running_loop().create_task(self._handle(object_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, object_id: str) -> None:
        try:
            await self._on_exit(object_id)
        except Exception:
            log.exception("recording the exit of %s failed", object_id[:13])
        finally:
            event = self._waiters.pop(object_id, None)
            if event is not None:
                event.set()

    async def wait(self, object_id: str, within: float | None) -> bool:
        """Waits until the exit of object_id is recorded; False on timeout or if not watched."""
        event = self._waiters.get(object_id)
        if event is None:
            return object_id not in self._fds
        try:
            await asyncio.wait_for(event.wait(), within)
        except TimeoutError:
            return False
        return True

    def watching(self, object_id: str) -> bool:
        return object_id in self._fds

    def close(self) -> None:
        loop = asyncio.get_event_loop()
        for fd in self._fds.values():
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()
