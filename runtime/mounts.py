"""The runtime's own mounts: a tmpfs for a pod's /dev/shm or a checkpoint's CRIU images,
and unmounting what a flow mounted.

The system calls and the mount table are oci/mounttable.py's.
"""

from __future__ import annotations

from pathlib import Path

from crishim.oci import mounttable


def mount_tmpfs(target: Path, size: str = "64m", mode: str = "1777", source: str = "shm") -> None:
    target.mkdir(parents=True, exist_ok=True)
    flags = mounttable.MS_NOSUID | mounttable.MS_NODEV | mounttable.MS_NOEXEC
    mounttable.mount(source, target, "tmpfs", flags, f"mode={mode},size={size}", what=f"mounting tmpfs on {target}")


def unmount(target: Path) -> None:
    """Lazily unmounts target and whatever is stacked on it; absent or not mounted is fine."""
    mounttable.unmount(target, stacked=True)
