"""Overlay mounts of image layers: container rootfs (with upper/work) and read-only views.

mount(2) is called through oci/mounttable.py. The option string must fit in one page;
with many layers (absolute paths of ~90 bytes each) it may not, so we then
run mount(8) from the layers' common parent with relative lowerdir names,
which the kernel resolves against the mounting process's cwd. Callers on the
event loop run these functions in a thread.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from crishim.oci.mounttable import MS_BIND, MS_NODEV, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, mount

from .errors import Internal, InvalidArgument

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _mount(source: str, target: Path, fstype: str | None, flags: int, data: str | None) -> None:
    mount(source, target, fstype, flags, data, what=f"mount {fstype or 'bind'} {source} on {target}")


def _overlay_options(lower: list[Path], upper: Path | None, work: Path | None, base: Path | None) -> str:
    def name(path: Path) -> str:
        text = os.path.relpath(path, base) if base is not None else str(path)
        if any(c in text for c in ",:="):
            raise InvalidArgument(f"layer path {text!r} contains ',', ':' or '=' which overlayfs cannot take")
        return text

    # overlayfs lists the TOPMOST lower first; `lower` comes lowest first.
    opts = ["lowerdir=" + ":".join(name(p) for p in reversed(lower))]
    if upper is not None and work is not None:
        opts += [f"upperdir={name(upper)}", f"workdir={name(work)}"]
    return ",".join(opts)


def mount_overlay(
    lower: list[Path], upper: Path | None, work: Path | None, target: Path, *, readonly: bool = False
) -> None:
    """Mounts an overlay of `lower` (lowest first) on `target`; no upper means read-only."""
    if not lower:
        raise InvalidArgument("an overlay needs at least one lower layer")
    if upper is not None and work is not None:
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    if upper is None and len(lower) == 1:
        # overlayfs refuses a single lowerdir without an upper: a read-only bind is the same view.
        _mount(str(lower[0]), target, None, MS_BIND, None)
        _mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
        return
    flags = MS_RDONLY if readonly or upper is None else 0
    data = _overlay_options(lower, upper, work, None)
    if len(data) < PAGE_SIZE - 1:
        _mount("overlay", target, "overlay", flags, data)
        return
    base = Path(os.path.commonpath([*lower, *([upper, work] if upper and work else [])]))
    data = _overlay_options(lower, upper, work, base)
    if len(data) >= PAGE_SIZE - 1:
        raise InvalidArgument(f"too many layers ({len(lower)}) for one overlay mount")
    cmd = [
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        data + (",ro" if flags & MS_RDONLY else ""),
        str(target),
    ]
    done = subprocess.run(cmd, cwd=base, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Internal(f"mounting overlay on {target} failed: {done.stderr.strip()}")


def mount_rootfs(lower: list[Path], upper: Path, work: Path, target: Path, readonly: bool = False) -> None:
    """A container rootfs: image layers below, the container's writable upper on top."""
    mount_overlay(lower, upper, work, target, readonly=readonly)


def bind_readonly(source: Path, target: Path) -> None:
    """Read-only bind of `source` (a directory, or a file onto an existing file `target`)."""
    if not target.exists():
        target.mkdir(parents=True)
    _mount(str(source), target, None, MS_BIND | MS_REC, None)
    _mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
