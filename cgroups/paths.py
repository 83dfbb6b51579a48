"""CRI cgroup parents -> OCI linux.cgroupsPath -> directories in the cgroup filesystem.

The kubelet hands each sandbox a `cgroup_parent` in the form its own cgroup
driver uses: an absolute path for cgroupfs (`/kubepods/burstable/podUID`), a
slice name for systemd (`kubepods-burstable-podUID.slice`). runc and crun take
`linux.cgroupsPath` in the matching form: a path, or `slice:prefix:name`.
The daemon itself needs the directories under each hierarchy to read stats and
write pod-level limits, so both directions live here.

Default parent when the kubelet gives none (crictl, tests): `/crishim` with
cgroupfs and `crishim.slice` with systemd, so everything the daemon starts sits
in one subtree that is easy to find, limit and clean up.
"""

from __future__ import annotations

import os
import re

from .detect import Driver
from .errors import InvalidArgument

DEFAULT_PARENT_CGROUPFS = "/crishim"
DEFAULT_PARENT_SYSTEMD = "crishim.slice"
# The systemd scope of a container is named "<prefix>-<id>.scope".
DEFAULT_SCOPE_PREFIX = "crishim"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_driver(driver: str) -> Driver:
    if driver == "cgroupfs":
        return "cgroupfs"
    if driver == "systemd":
        return "systemd"
    raise InvalidArgument(f"unknown cgroup driver {driver!r}: use 'cgroupfs' or 'systemd'")


def default_parent(driver: str) -> str:
    """The parent used when a sandbox config has no cgroup_parent."""
    return DEFAULT_PARENT_SYSTEMD if check_driver(driver) == "systemd" else DEFAULT_PARENT_CGROUPFS


def is_slice(name: str) -> bool:
    return name.endswith(".slice") and "/" not in name


def expand_slice(name: str) -> str:
    """`a-b-c.slice` -> `/a.slice/a-b.slice/a-b-c.slice`; `-.slice` (the root) -> `/`.

    systemd nests a slice under every prefix of its dash-separated name.
    """
    if not is_slice(name):
        raise InvalidArgument(f"{name!r} is not a systemd slice name: it must end in .slice and hold no '/'")
    if name == "-.slice":
        return "/"
    stem = name[: -len(".slice")]
    parts = stem.split("-")
    if any(not p for p in parts):
        raise InvalidArgument(f"slice name {name!r} has an empty component (leading, trailing or double '-')")
    out, prefix = [], ""
    for part in parts:
        prefix = f"{prefix}-{part}" if prefix else part
        out.append(f"{prefix}.slice")
    return "/" + "/".join(out)


def systemd_slice(parent: str) -> str:
    """The slice a systemd-driver cgroup parent names.

    The kubelet sends the unit name (`kubepods-burstable-podUID.slice`); critest sends
    `/test.slice`, and some callers the expanded path (`/kubepods.slice/kubepods-pod1.slice`).
    As containerd and CRI-O do, the last path component is the slice.
    """
    name = parent.rstrip("/").rsplit("/", 1)[-1] if "/" in parent else parent
    if not is_slice(name):
        raise InvalidArgument(
            f"cgroup parent {parent!r} is not a systemd slice but the cgroup driver is systemd: "
            "name a slice such as 'kubepods-burstable-pod<uid>.slice', or set the same cgroup driver "
            "for the kubelet and crishim"
        )
    expand_slice(name)
    return name


def is_pod_cgroup(parent: str, pod_uid: str) -> bool:
    """Whether cgroup parent `parent` is the cgroup the kubelet made for pod `pod_uid` alone.

    The kubelet names a pod's cgroup after its UID: `/kubepods/burstable/pod<uid>` with
    cgroupfs, `kubepods-burstable-pod<uid>.slice` with systemd, where the UID's dashes
    become underscores (a dash nests slices). A parent several pods share (crishim's
    default, critest's /test.slice) never matches, so its limits are never a pod's.
    """
    if not parent or not pod_uid:
        return False
    leaf = parent.rstrip("/").rsplit("/", 1)[-1].removesuffix(".slice")
    names = {f"pod{pod_uid}", f"pod{pod_uid.replace('-', '_')}"}
    return leaf in names or any(leaf.endswith("-" + n) for n in names)


def _check_cgroupfs_path(path: str, what: str) -> str:
    if is_slice(path):
        raise InvalidArgument(
            f"{what} {path!r} is a systemd slice but the cgroup driver is cgroupfs: "
            "set the same cgroup driver for the kubelet and crishim"
        )
    path = "/" + path.strip("/")
    if any(part in (".", "..") for part in path.split("/")):
        raise InvalidArgument(f"{what} {path!r} must not contain '.' or '..' components")
    return path


def _check_id(container_id: str) -> None:
    if not _ID.match(container_id):
        raise InvalidArgument(f"container id {container_id!r} cannot name a cgroup: use letters, digits, '_', '.', '-'")


def container_cgroups_path(parent: str, container_id: str, driver: str, prefix: str = DEFAULT_SCOPE_PREFIX) -> str:
    """The OCI linux.cgroupsPath for a container under `parent` (empty = default parent).

    cgroupfs: `/kubepods/burstable/podUID/CID`; systemd: `kubepods-burstable-podUID.slice:crishim:CID`.
    """
    drv = check_driver(driver)
    _check_id(container_id)
    parent = parent or default_parent(drv)
    if drv == "systemd":
        return f"{systemd_slice(parent)}:{prefix}:{container_id}"
    parent = _check_cgroupfs_path(parent, "cgroup parent")
    return f"{parent.rstrip('/')}/{container_id}"


def parent_to_fs(parent: str, driver: str) -> str:
    """A cgroup parent (pod cgroup) as a path relative to each hierarchy root, e.g. `/kubepods/pod1`."""
    drv = check_driver(driver)
    parent = parent or default_parent(drv)
    if drv == "systemd":
        return expand_slice(systemd_slice(parent))
    return _check_cgroupfs_path(parent, "cgroup parent")


def cgroups_path_to_fs(cgroups_path: str, driver: str) -> str:
    """An OCI linux.cgroupsPath as a path relative to each hierarchy root.

    systemd `slice:prefix:name` becomes `<expanded slice>/<prefix>-<name>.scope`
    (or `<expanded slice>/<name>` when name is itself a slice), as runc does.
    """
    drv = check_driver(driver)
    if drv == "cgroupfs":
        return _check_cgroupfs_path(cgroups_path, "cgroups path")
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise InvalidArgument(f"systemd cgroups path {cgroups_path!r} must have the form slice:prefix:name")
    slice_, prefix, name = parts
    base = expand_slice(slice_ or "system.slice")
    if name.endswith(".slice"):
        unit = name
    else:
        _check_id(name)
        unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return f"{base.rstrip('/')}/{unit}"


def to_fs(path_or_cgroups_path: str, driver: str) -> str:
    """Accept either an OCI cgroupsPath or an already relative cgroup path ("/a/b")."""
    if check_driver(driver) == "systemd":
        if ":" in path_or_cgroups_path:
            return cgroups_path_to_fs(path_or_cgroups_path, driver)
        if path_or_cgroups_path.rstrip("/").endswith(".slice"):
            return parent_to_fs(path_or_cgroups_path, driver)  # a pod's slice
    return _check_cgroupfs_path(path_or_cgroups_path, "cgroup path")


def controller_dir(mount_point: str, rel: str) -> str:
    """The directory of cgroup `rel` ("/a/b") in the hierarchy mounted at `mount_point`."""
    rel = rel.strip("/")
    return os.path.join(mount_point, rel) if rel else mount_point
