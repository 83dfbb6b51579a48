"""Host device nodes as OCI spec devices and device-cgroup rules."""

from __future__ import annotations

import os
import stat
from typing import Any

from .errors import InvalidArgument


def _kind(mode: int) -> str | None:
    if stat.S_ISCHR(mode):
        return "c"
    if stat.S_ISBLK(mode):
        return "b"
    if stat.S_ISFIFO(mode):
        return "p"
    return None


def device_from_host(
    host_path: str, container_path: str, permissions: str = "rwm"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec device, cgroup allow rule) for one host device node.

    Major/minor, type, mode and owner are read from the host node so the
    node created in the container matches it.
    """
    if not permissions or set(permissions) - set("rwm"):
        raise InvalidArgument(f"device {host_path}: permissions {permissions!r} must be a mix of r, w, m")
    try:
        st = os.stat(host_path)
    except OSError as e:
        raise InvalidArgument(f"device {host_path} cannot be used: {e.strerror}") from e
    kind = _kind(st.st_mode)
    if kind is None:
        raise InvalidArgument(f"{host_path} is not a device node")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    dev = {
        "path": container_path or host_path,
        "type": kind,
        "major": major,
        "minor": minor,
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    rule = {"allow": True, "type": kind, "major": major, "minor": minor, "access": permissions}
    return dev, rule


def host_devices(root: str = "/dev") -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every device node under /dev (privileged containers get them all).

    /dev/pts and /dev/shm entries are left to their own mounts, and a
    /dev/console is never copied (the runtime sets it up for a tty).
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            dirnames[:] = [d for d in dirnames if d not in ("pts", "shm", "fd", "mqueue")]
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if path == "/dev/console" or os.path.islink(path):
                continue
            try:
                out.append(device_from_host(path, path, "rwm"))
            except InvalidArgument:
                continue
    return out
