"""ReopenContainerLog: conmon reopens the log file so the kubelet can rotate the old one."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from crishim.oci import conmon
from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.services import Services
from crishim.runtime.state.records import CONTAINER_RUNNING

REOPEN_WAIT_SECONDS = 5.0


async def reopen_container_log(svc: Services, container_id: str) -> None:
    """Synchronous for the caller: when this returns the new file exists.

    A symlink planted at the log path is replaced by a regular file first: conmon
    opens the path itself and must never follow a link out of the log directory.
    """
    record = svc.state.containers.get(container_id)
    meta = record.meta
    if record.status.state != CONTAINER_RUNNING:
        raise FailedPrecondition(
            f"container {container_id} is {record.status.state}, not RUNNING: its log cannot be reopened"
        )
    if not meta.log_path:
        raise FailedPrecondition(f"container {container_id} has no log path")
    path = Path(meta.log_path)
    await asyncio.to_thread(_remove_symlink, path)
    await conmon.reopen_log(Path(meta.bundle))
    deadline = asyncio.get_running_loop().time() + REOPEN_WAIT_SECONDS
    while not await asyncio.to_thread(path.exists):
        if asyncio.get_running_loop().time() > deadline:
            raise FailedPrecondition(f"conmon did not reopen the log of {container_id} within {REOPEN_WAIT_SECONDS}s")
        await asyncio.sleep(0.01)
    if await asyncio.to_thread(_remove_symlink, path):
        raise FailedPrecondition(f"log path {path} was replaced by a symlink while reopening; refused")


def _remove_symlink(path: Path) -> bool:
    """Removes a symlink planted at the log path; True if there was one."""
    if path.is_symlink():
        os.unlink(path)
        return True
    return False
