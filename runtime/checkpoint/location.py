"""Where CheckpointContainer may write its archive: CRI's `location`, checked before any work.

The kubelet passes a new file under /var/lib/kubelet/checkpoints; CheckpointPod's
`output_path` is checked the same way. The archive
holds every memory page of the container, so the daemon writes it only where
the caller plainly named: an absolute path in an existing directory, not
through a symlink (which could point the write at any file of the node), and
not over a directory.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from crishim.runtime.errors import InvalidArgument

FIELD = "location"


def checked_location(location: str, field: str = FIELD) -> Path:
    """The archive's path, or INVALID_ARGUMENT naming what is wrong with it (as the request's `field`)."""
    if not location:
        raise InvalidArgument(f"{field} is empty: name the archive file to write")
    if "\x00" in location:
        raise InvalidArgument(f"{field} {location!r} contains a NUL byte")
    if not location.startswith("/"):
        raise InvalidArgument(f"{field} {location!r} must be absolute")
    if posixpath.normpath(location) != location:
        raise InvalidArgument(f"{field} {location!r} must be a plain file path (no '..', '.', '//' or trailing '/')")
    path = Path(location)
    try:
        parent = os.stat(path.parent)
    except OSError as exc:
        raise InvalidArgument(f"{field} {location!r}: its directory {str(path.parent)!r} "
                              f"cannot be used ({exc.strerror})") from None  # fmt: skip
    if not stat.S_ISDIR(parent.st_mode):
        raise InvalidArgument(f"{field} {location!r}: {str(path.parent)!r} is not a directory")
    try:
        own = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise InvalidArgument(f"{field} {location!r} cannot be used ({exc.strerror})") from None
    if stat.S_ISLNK(own.st_mode):
        raise InvalidArgument(f"{field} {location!r} is a symlink: name the file itself")
    if not stat.S_ISREG(own.st_mode):
        raise InvalidArgument(f"{field} {location!r} exists and is not a regular file")
    return path
