"""ExecSync: run a command in a running container and capture its output."""

from __future__ import annotations

from typing import Any

from crishim.oci.runtime import ExecResult
from crishim.runtime.bundle import read_runtime_spec
from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.services import Services
from crishim.runtime.state.records import CONTAINER_RUNNING


def exec_process(bundle: str, cmd: list[str], tty: bool = False) -> dict[str, Any]:
    """The container's own process settings (user, env, cwd, capabilities) with another command."""
    spec = read_runtime_spec(bundle)
    if spec is None:
        raise FailedPrecondition(f"the bundle {bundle} of this container is gone")
    process: dict[str, Any] = dict(spec["process"])
    process["args"] = cmd
    process["terminal"] = tty
    process.pop("consoleSize", None)
    return process


async def exec_sync(svc: Services, container_id: str, cmd: list[str], timeout_seconds: int) -> ExecResult:
    record = svc.state.containers.get(container_id)
    if record.status.state != CONTAINER_RUNNING:
        raise FailedPrecondition(
            f"container {container_id} is {record.status.state}, not RUNNING: exec needs a running container"
        )
    meta = record.meta
    handler = svc.handler(meta.runtime_handler)
    process = exec_process(meta.bundle, cmd)
    # api.proto: timeout 0 means no timeout.
    result: ExecResult = await handler.runtime.exec(
        container_id, process, time_limit=float(timeout_seconds) if timeout_seconds > 0 else None
    )
    return result
