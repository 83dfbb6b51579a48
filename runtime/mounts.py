"""The runtime's own mounts: a tmpfs for a pod's /dev/shm, and unmounting what a flow mounted.

The mount table itself is read (and mounts taken off it) by oci/mounttable.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from crishim.oci import mounttable

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8


def mount_tmpfs(target: Path, size: str = "64m", mode: str = "1777") -> None:
    target.mkdir(parents=True, exist_ok=True)
    data = f"mode={mode},size={size}".encode()
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(b"shm", str(target).encode(), b"tmpfs", flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mounting tmpfs on {target}: {os.strerror(err)}")


def unmount(target: Path) -> None:
    """Lazily unmounts target and whatever is stacked on it; absent or not mounted is fine."""
    mounttable.unmount(target, stacked=True)
