"""Small mount helpers (tmpfs for /dev/shm, unmount) over libc mount(2)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MNT_DETACH = 0x2


def mount_tmpfs(target: Path, size: str = "64m", mode: str = "1777") -> None:
    target.mkdir(parents=True, exist_ok=True)
    data = f"mode={mode},size={size}".encode()
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(b"shm", str(target).encode(), b"tmpfs", flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mounting tmpfs on {target}: {os.strerror(err)}")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    if "\\" not in field:
        return field
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> list[str]:
    """The mount points of this mount namespace, in /proc/self/mountinfo order, unescaped."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        return [_unescape(fields[4]) for fields in (line.split() for line in fh) if len(fields) > 4]


def is_mount_point(path: Path) -> bool:
    return os.path.realpath(path) in mount_points()


def unmount(target: Path) -> None:
    """Lazily unmounts target; absent or not mounted is fine (removal is idempotent)."""
    while True:
        if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            raise OSError(err, f"unmounting {target}: {os.strerror(err)}")
        # Stacked mounts: keep going until nothing is mounted there.
        if not is_mount_point(target):
            return
