"""Freezing a container for its dump: cgroup v2's cgroup.freeze written here, `runc pause` elsewhere.

On a cgroup v2 node `runc pause` writes 1 to the container's cgroup.freeze and
waits for cgroup.events to say `frozen 1`, and `runc resume` writes 0: runc's
state then reads "paused" or "running" from that same file. As processes they
cost a Go runtime's start each (a tenth of a second apiece on a slow node),
twice per checkpoint; writing the file here does the same in a millisecond,
and `runc state`, CRIU (which finds the cgroup frozen and leaves it so) and
the start-up recovery in stage.py see exactly what runc would have left.

A v1 or hybrid node, or a cgroup not where the container's cgroupsPath says,
goes through runc as before, with runc's own errors.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from crishim.cgroups.detect import CgroupVersion
from crishim.cgroups.errors import InvalidArgument
from crishim.cgroups.paths import controller_dir, to_fs
from crishim.cgroups.stats import host_layout
from crishim.oci.runtime import OciRuntime
from crishim.runtime.errors import FailedPrecondition

# runc gives a freeze this long before it calls it failed.
FREEZE_TIMEOUT = 10.0
_POLL = 0.005


def v2_cgroup_dir(cgroups_path: str, driver: str) -> Path | None:
    """Blocking: the container's cgroup directory on a cgroup v2 node, None elsewhere or when it is gone."""
    layout = host_layout()
    if layout.version is not CgroupVersion.V2 or layout.v2_mount is None or not cgroups_path:
        return None
    try:
        directory = Path(controller_dir(layout.v2_mount, to_fs(cgroups_path, driver)))
    except InvalidArgument:
        return None
    return directory if (directory / "cgroup.freeze").is_file() else None


def freeze_cgroup(directory: Path) -> bool:
    """Blocking: freezes the cgroup and waits until every task in it is; False (and thawed) if they are not in time."""
    (directory / "cgroup.freeze").write_text("1")
    deadline = time.monotonic() + FREEZE_TIMEOUT
    while time.monotonic() < deadline:
        if "frozen 1" in (directory / "cgroup.events").read_text().splitlines():
            return True
        time.sleep(_POLL)
    thaw_cgroup(directory)
    return False


async def pause(runtime: OciRuntime, container_id: str, directory: Path | None) -> None:
    """The container frozen: through `directory`'s cgroup.freeze when given, else `runc pause`."""
    if directory is None:
        await runtime.pause(container_id)
        return
    if not await asyncio.to_thread(freeze_cgroup, directory):
        raise FailedPrecondition(f"container {container_id} did not freeze within {FREEZE_TIMEOUT:.0f}s; left running")


async def resume(runtime: OciRuntime, container_id: str, directory: Path | None) -> None:
    """The container thawed, as `pause` froze it."""
    if directory is None:
        await runtime.resume(container_id)
        return
    await asyncio.to_thread(thaw_cgroup, directory)


def thaw_cgroup(directory: Path) -> None:
    """Blocking: the cgroup's tasks run again."""
    (directory / "cgroup.freeze").write_text("0")
