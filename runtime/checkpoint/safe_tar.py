"""Extracting a checkpoint archive, and the container layer inside it, without leaving the destination.

tarfile's extraction filters (`filter="data"`) arrived in Python 3.11.4 and
3.12; Debian 12's Python is 3.11.2, and the node runs it. So every member is
checked here, against the tree on disk as earlier members left it, before it
is extracted:

- its path stays inside the destination, even through symlinks already there;
- a hard link's target stays inside too;
- in an archive's own members (`strict`), a symlink may not point out, absolutely
  or through '..', and devices and FIFOs are refused, as the "data" filter does;
- in a container's layer (not strict) symlinks may point anywhere, as a container's
  absolute links do (they resolve inside its root, not the node's), and devices and
  modes are kept: the layer is the container's own files.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath

# Where tarfile has filters, this one leaves members as they are: the checks are ours.
_FILTER_KWARGS: dict[str, str] = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}


class UnsafeMember(tarfile.TarError):
    """A member that would be written, or would point, outside the destination."""


def extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, *, strict: bool) -> None:
    """Checks `member` against `dest` as it is now, then extracts it (numeric owners)."""
    check(member, dest, strict=strict)
    tar.extract(member, dest, numeric_owner=True, **_FILTER_KWARGS)  # type: ignore[arg-type]


def check(member: tarfile.TarInfo, dest: Path, *, strict: bool) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise UnsafeMember(f"member {member.name!r} is not a plain relative path")
    root = os.path.realpath(dest)
    target = os.path.realpath(os.path.join(root, member.name))
    if not _inside(root, target):
        raise UnsafeMember(f"member {member.name!r} would be written outside the destination")
    if member.islnk() and not _inside(root, os.path.realpath(os.path.join(root, member.linkname))):
        raise UnsafeMember(f"hard link {member.name!r} points outside the destination")
    if not strict:
        return
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeMember(f"member {member.name!r} is a device or FIFO")
    if member.issym():
        pointed = os.path.join(os.path.dirname(target), member.linkname)
        if os.path.isabs(member.linkname) or not _inside(root, os.path.realpath(pointed)):
            raise UnsafeMember(f"symlink {member.name!r} points outside the destination")


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
