"""The kernel's mount table: reading /proc/<pid>/mountinfo, adding mounts and taking them off.

Every package that asks "what is mounted where" reads it here: the cgroup layout
detection, the runtime feature probes (the options of a mount inside a probe
container), image-volume lease sweeps, orphan clean-up and netns pins. The
kernel writes space, tab, newline and backslash in paths as three-digit octal
escapes (`\\040`); they are decoded here, once. mount(2) and umount2(2) are
called from here too, for overlays, binds, tmpfs, pins and cgroup hierarchies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"
# mount(2) flags (linux/mount.h) and umount2(2)'s lazy detach.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo, with the fields callers use."""

    point: str
    options: tuple[str, ...]  # per-mount options: rw/ro, nosuid, idmapped...
    fstype: str
    super_options: tuple[str, ...]  # the filesystem's own options (a v1 cgroup's controllers)


def unescape(field: str) -> str:
    """Decodes the octal escapes the kernel writes for space, tab, newline and backslash."""
    if "\\" not in field:
        return field
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a mountinfo text, in order; lines that do not parse are skipped."""
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lfields, rfields = left.split(), right.split()
        if len(lfields) < 6 or len(rfields) < 3:
            continue
        entries.append(
            MountEntry(
                point=unescape(lfields[4]),
                options=tuple(lfields[5].split(",")),
                fstype=rfields[0],
                super_options=tuple(rfields[2].split(",")),
            )
        )
    return entries


def read_mountinfo(path: str | Path = MOUNTINFO) -> list[MountEntry]:
    """The mount table of this process, or of another through /proc/<pid>/mountinfo."""
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        return parse_mountinfo(fh.read())


def mount_points(path: str | Path = MOUNTINFO) -> list[str]:
    """The mount points of the mount namespace, in mountinfo order (stacked ones repeat)."""
    return [entry.point for entry in read_mountinfo(path)]


def is_mount_point(path: str | Path) -> bool:
    """Whether something is mounted on `path` (symlinks resolved first, as the kernel does)."""
    return os.path.realpath(path) in mount_points()


def mount(source: str, target: str | Path, fstype: str | None, flags: int, data: str | None, *, what: str) -> None:
    """mount(2); OSError(errno, "`what`: reason") when the kernel refuses."""
    encoded_data = data.encode() if data is not None else None
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode() if fstype else None, flags, encoded_data):
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unmount(target: str | Path, *, detach: bool = True, stacked: bool = False) -> None:
    """Unmounts `target`; absent or not mounted is fine (removals are idempotent).

    `detach` (MNT_DETACH) unmounts lazily, so a busy mount does not fail the call;
    `stacked` keeps going until nothing at all is mounted there.
    """
    while True:
        if _libc.umount2(str(target).encode(), MNT_DETACH if detach else 0) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):  # not a mount point; gone
                return
            raise OSError(err, f"unmounting {target}: {os.strerror(err)}")
        if not stacked or not is_mount_point(target):
            return
