"""Idmapped bind mounts (mount_setattr(2) with MOUNT_ATTR_IDMAP) of image layers.

In a pod user namespace the container's root is an unprivileged host user. An
overlay over idmapped views of the image layers shows the image's files as
owned by the container's own users, as containerd does for user-namespaced
pods, so `/` and `/etc` belong to the container's root. The upper dir stays
a plain directory owned by the mapped root.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

# x86_64 and aarch64 share these numbers (the new mount API is in the generic table).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
MOUNT_ATTR_RDONLY = 0x1


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def idmapped_bind(source: Path, target: Path, userns_path: str, readonly: bool = True) -> None:
    """Mounts an idmapped (and by default read-only) view of `source` on `target`.

    The mapping is the one of the user namespace at `userns_path` (e.g. the pod
    infra process's /proc/PID/ns/user). Blocking; call it from a thread.
    """
    target.mkdir(parents=True, exist_ok=True)
    tree = _check(
        _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source), OPEN_TREE_CLONE | os.O_CLOEXEC),
        f"open_tree {source}",
    )
    try:
        ns_fd = os.open(userns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            attr = _MountAttr(attr_set=MOUNT_ATTR_IDMAP | (MOUNT_ATTR_RDONLY if readonly else 0), userns_fd=ns_fd)
            _check(
                _libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)),
                f"mount_setattr (idmap) {source}",
            )
        finally:
            os.close(ns_fd)
        _check(
            _libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH),
            f"move_mount {source} -> {target}",
        )
    finally:
        os.close(tree)
