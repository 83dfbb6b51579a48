"""mount(2) for tests that build host mounts themselves, as critest does.

The conformance mount specs bind-mount host dirs, change their propagation and
stack tmpfs on them before handing them to a container; critest makes those calls
directly with its own flags, so the tests do too. Taking them down again is the
mount table's job (crishim.oci.mounttable).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from crishim.oci.mounttable import unmount

MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


def mount(source: str | Path, target: str | Path, fstype: str = "", flags: int = 0) -> None:
    """mount(2); raises OSError with the errno and paths on failure."""
    src = os.fsencode(str(source)) if source else None
    fs = fstype.encode() if fstype else None
    if _libc.mount(src, os.fsencode(str(target)), fs, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source!r} on {target!r} (flags {flags:#x}): {os.strerror(err)}")


def umount_all(path: str | Path) -> None:
    """Lazily unmounts every mount stacked on `path` (cleanup after a test, whatever it left)."""
    unmount(path, stacked=True)
