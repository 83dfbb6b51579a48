"""Claiming the daemon's unix socket: refuse a live one, replace a stale one."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from crishim.runtime.errors import FailedPrecondition


def socket_in_use(path: Path) -> bool:
    """True when something accepts connections on the socket file."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def claim_socket_path(path: Path) -> None:
    """Prepares `path` for bind: parent created, a stale socket removed, a live one refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.exists() or path.is_symlink()):
        return
    if socket_in_use(path):
        raise FailedPrecondition(f"another daemon is serving on {path}; stop it first or set a different 'socket'")
    try:
        path.unlink()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def restrict_socket(path: Path, mode: int = 0o660) -> None:
    os.chmod(path, mode)
