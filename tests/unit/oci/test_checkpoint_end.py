"""An overrunning checkpoint's runc session is emptied: runc, what it started, and what that started
after the first look, whatever process group each is in; and the daemon, their subreaper, collects
them all, for a zombie left below it is a process the node still shows."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys

from crishim.oci import checkpoint, processes, runtime

# Like runc, the leader waits for its child; the child starts members as fast as it can until it is
# killed (or has made 400), each in a process group of its own, as CRIU and its helpers need not
# share runc's group.
_SPAWNER = """
import os, time
if os.fork() == 0:
    for _ in range(400):
        if os.fork() == 0:
            os.setpgid(0, 0)
            time.sleep(300)
            os._exit(0)
    time.sleep(300)
os.wait()
"""


def _no_longer_subreaper() -> None:
    """Undoes `become_subreaper` for the tests that follow in this process."""
    assert ctypes.CDLL(None, use_errno=True).prctl(runtime._PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) == 0


def _session_members(sid: int) -> list[int]:
    return [pid for pid, session in checkpoint._sessions() if session == sid]


async def _until_members(sid: int, count: int) -> None:
    for _ in range(1000):
        if len(_session_members(sid)) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"session {sid} did not reach {count} members")


async def test_end_leaves_no_member_of_the_session_not_even_a_zombie() -> None:
    runtime.become_subreaper()  # as the daemon is
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _SPAWNER, start_new_session=True)
    try:
        await _until_members(proc.pid, 6)
        groups = {os.getpgid(pid) for pid in _session_members(proc.pid)}
        assert len(groups) > 1, "the members should span process groups"
        await checkpoint._end(proc)
        assert proc.returncode is not None  # runc itself collected
        assert _session_members(proc.pid) == []
    finally:  # a failure above must not leave the spawner going
        for pid in [proc.pid, *_session_members(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await proc.wait()
        _no_longer_subreaper()
        processes.wait_gone(_session_members(proc.pid))
