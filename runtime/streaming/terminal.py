"""Resizing a terminal that another process (the OCI runtime) holds the master of.

crun 1.8 relays a foreground `crun exec --tty` session between our pty and the
container's terminal but, unlike runc, does not copy the size on SIGWINCH. The
container terminal's master lives in the crun process, so we borrow it.
"""

from __future__ import annotations

import ctypes
import logging
import os

from crishim.runtime.streaming.fdio import set_winsize
from crishim.runtime.streaming.streams import TerminalSize

log = logging.getLogger(__name__)

SYS_PIDFD_GETFD = 438  # the same number on every architecture (unified syscall table)

_libc = ctypes.CDLL(None, use_errno=True)


def resize_held_terminals(pid: int, size: TerminalSize) -> int:
    """Set `size` on every pty master process `pid` holds; returns how many were resized.

    The fds are borrowed with pidfd_getfd(2) (Linux 5.6): opening /proc/PID/fd/N of
    a pty master would allocate a new pty instead. Failures are not fatal: the
    session simply keeps its old size.
    """
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    resized = 0
    pidfd = -1
    try:
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if not target.endswith("ptmx"):
                continue
            if pidfd < 0:
                pidfd = os.pidfd_open(pid)
            fd = _libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                log.debug("pidfd_getfd(%d, %s): %s", pid, name, os.strerror(ctypes.get_errno()))
                continue
            try:
                set_winsize(fd, size)
                resized += 1
            except OSError as exc:
                log.debug("resizing the terminal of %d failed: %s", pid, exc)
            finally:
                os.close(fd)
    except OSError as exc:
        log.debug("cannot reach the terminals of %d: %s", pid, exc)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return resized
