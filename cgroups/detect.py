"""What cgroup setup this host has: version, mount points, PSI, driver default.

Read once at start-up: the daemon picks its cgroup driver, decides whether
per-cgroup PSI can be reported, and (for crun 1.8.1) whether the hybrid layout
must be fixed before any container can start.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from crishim.oci.mounttable import MOUNTINFO, mount, mount_points, read_mountinfo

from .errors import FailedPrecondition, PermissionDenied

Driver = Literal["cgroupfs", "systemd"]

CGROUP_ROOT = "/sys/fs/cgroup"

# Mount options of a v1 cgroup mount that are not controller names.
_GENERIC_OPTIONS = frozenset(
    {"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods", "nsdelegate"}
)


class CgroupVersion(enum.Enum):
    """How the host mounts cgroups.

    V1: only v1 hierarchies; HYBRID: v1 controllers plus a cgroup2 mount
    (usually /sys/fs/cgroup/unified); V2: one unified hierarchy at the root.
    """

    V1 = "v1"
    HYBRID = "hybrid"
    V2 = "v2"


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """The cgroup mounts of this host, as seen from the daemon's mount namespace."""

    version: CgroupVersion
    # v1 controller (e.g. "memory", "name=systemd") -> mount point; co-mounted
    # controllers ("cpu,cpuacct") share one mount point.
    v1_mounts: Mapping[str, str] = field(default_factory=dict)
    v2_mount: str | None = None
    # Controllers the v2 hierarchy holds (its root cgroup.controllers).
    v2_controllers: frozenset[str] = frozenset()
    # True when the v2 hierarchy has cpu.pressure & co, i.e. per-cgroup PSI.
    psi: bool = False


def _v1_controllers(options: tuple[str, ...]) -> list[str]:
    names = []
    for opt in options:
        if opt.startswith("name="):
            names.append(opt)
        elif "=" not in opt and opt not in _GENERIC_OPTIONS:
            names.append(opt)
    return names


def _read_words(path: str) -> frozenset[str]:
    try:
        with open(path) as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def detect(mountinfo: str = MOUNTINFO) -> CgroupLayout:
    """Inspect the mount table and the v2 root to describe the cgroup layout."""
    mounts = read_mountinfo(mountinfo)
    v1: dict[str, str] = {}
    v2_mount: str | None = None
    for m in mounts:
        if m.fstype == "cgroup":
            for name in _v1_controllers(m.super_options):
                v1.setdefault(name, m.point)
        elif m.fstype == "cgroup2" and v2_mount is None:
            v2_mount = m.point
    real_v1 = [name for name in v1 if not name.startswith("name=")]
    if v2_mount is not None and not real_v1:
        version = CgroupVersion.V2
    elif v2_mount is not None:
        version = CgroupVersion.HYBRID
    else:
        version = CgroupVersion.V1
    controllers: frozenset[str] = frozenset()
    psi = False
    if v2_mount is not None:
        controllers = _read_words(os.path.join(v2_mount, "cgroup.controllers"))
        psi = os.path.exists(os.path.join(v2_mount, "cpu.pressure"))
    return CgroupLayout(version, v1, v2_mount, controllers, psi)


def default_driver(root: str = "/") -> Driver:
    """systemd when PID 1 is systemd (it creates /run/systemd/system), else cgroupfs.

    This is the test sd_booted() performs; the kubelet's cgroupDriver must match.
    """
    return "systemd" if os.path.isdir(os.path.join(root, "run/systemd/system")) else "cgroupfs"


def hybrid_blocks_crun(layout: CgroupLayout | None = None) -> bool:
    """True when crun 1.8.1 would refuse to run ("cgroups in hybrid mode not supported").

    crun accepts a hybrid host only while the v2 hierarchy holds no controller.
    """
    layout = layout if layout is not None else detect()
    return layout.version is CgroupVersion.HYBRID and bool(layout.v2_controllers)


def _is_cgroup_mount_of(point: str, controller: str, mountinfo: str) -> bool:
    return any(
        m.point == point and m.fstype == "cgroup" and controller in _v1_controllers(m.super_options)
        for m in read_mountinfo(mountinfo)
    )


def _is_mount_point(point: str, mountinfo: str) -> bool:
    return point in mount_points(mountinfo)


def _mount_cgroup_v1(controller: str, target: str) -> None:
    what = f"mounting the {controller} controller as a v1 hierarchy at {target} failed"
    try:
        mount("cgroup", target, "cgroup", 0, controller, what=what)
    except OSError as exc:
        msg = f"{what}: {exc.strerror}"
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise PermissionDenied(msg + "; run the daemon as root") from exc
        raise FailedPrecondition(
            msg + "; the v2 hierarchy may still use it (remove its child cgroups) or mount it by hand"
        ) from exc


def fix_hybrid_for_crun(
    layout: CgroupLayout | None = None,
    cgroup_root: str = CGROUP_ROOT,
    mountinfo: str = MOUNTINFO,
) -> list[str]:
    """Move every controller of the v2 hierarchy to a v1 mount at CGROUP_ROOT/NAME.

    Needs root. Idempotent: a controller already mounted as v1 at its target is
    skipped. Returns the controllers mounted by this call.
    """
    layout = layout if layout is not None else detect(mountinfo)
    if layout.version is not CgroupVersion.HYBRID:
        return []
    done = []
    for name in sorted(layout.v2_controllers):
        target = os.path.join(cgroup_root, name)
        if _is_cgroup_mount_of(target, name, mountinfo):
            continue
        if _is_mount_point(target, mountinfo):
            raise FailedPrecondition(
                f"{target} is already a mount point of something else; unmount it so the "
                f"{name} controller can be mounted there as a v1 hierarchy"
            )
        os.makedirs(target, exist_ok=True)
        _mount_cgroup_v1(name, target)
        done.append(name)
    return done
