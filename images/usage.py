"""Disk usage of a directory tree (bytes allocated, inodes): ImageFsInfo's filesystems, a container's writable layer."""

from __future__ import annotations

import os
from pathlib import Path


def tree_usage(root: str | Path) -> tuple[int, int]:
    """(bytes, inodes) below `root`, counting each hardlinked inode once; does not cross mounts.

    Symlinks count as themselves, never followed; a missing `root` is (0, 0).
    """
    seen: set[int] = set()
    total_bytes = 0
    inodes = 0
    try:
        root_dev = os.lstat(root).st_dev
    except FileNotFoundError:
        return 0, 0
    stack = [str(root)]
    while stack:
        current = stack.pop()
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            continue
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            total_bytes += st.st_blocks * 512
            inodes += 1
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        est = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if est.st_dev == root_dev:
                            stack.append(entry.path)
                        continue
                    if est.st_ino in seen:
                        continue
                    seen.add(est.st_ino)
                    total_bytes += est.st_blocks * 512
                    inodes += 1
        except (NotADirectoryError, FileNotFoundError, PermissionError):
            continue
    return total_bytes, inodes
