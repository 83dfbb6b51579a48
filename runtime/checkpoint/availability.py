"""Whether checkpoint can work here: `criu check` on this kernel, and CRIU in the handler's runtime.

`criu check` takes a second or so and its answer only changes with the kernel or
the package, so it runs once per daemon (the first CheckpointContainer) and is
kept. A failing check is the node's state, not the request's: the RPC answers
FAILED_PRECONDITION with CRIU's own words, so the operator sees what to fix.
The same answers, per handler, are in Status' verbose info (`checkpoint_support`),
so an operator sees before any request whether a node can checkpoint, and why not.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass

from crishim.oci.runtime import OciRuntime
from crishim.runtime.errors import FailedPrecondition

CHECK_TIME_LIMIT = 30.0
# Status answers within this even while a first `criu check` runs (it goes on in the background).
STATUS_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class Availability:
    """Checkpoint can run (`reason` empty), or cannot, and why."""

    available: bool
    reason: str = ""


_criu: dict[str, Availability] = {}
_handlers: dict[str, Availability] = {}
_pending: dict[str, asyncio.Task[Availability]] = {}
_background: set[asyncio.Task[Availability]] = set()


async def criu_availability(criu: str = "criu") -> Availability:
    """`criu check`, once: concurrent first callers share one run."""
    known = _criu.get(criu)
    if known is not None:
        return known
    task = _pending.get(criu)
    if task is None or task.get_loop() is not asyncio.get_running_loop():
        task = asyncio.get_running_loop().create_task(_check_criu(criu))
        _pending[criu] = task
    try:
        result = await asyncio.shield(task)
    finally:
        if task.done():
            _pending.pop(criu, None)
    _criu[criu] = result
    return result


async def _check_criu(criu: str) -> Availability:
    found = shutil.which(criu)
    if found is None:
        return Availability(False, f"{criu} is not installed (Debian package 'criu')")
    proc = await asyncio.create_subprocess_exec(
        found, "check", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(CHECK_TIME_LIMIT):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Availability(False, f"{found} check did not finish within {CHECK_TIME_LIMIT:g}s")
    if proc.returncode != 0:
        return Availability(False, f"{found} check failed: {criu_reason(out.decode(errors='replace'))}")
    return Availability(True)


def criu_reason(output: str) -> str:
    """CRIU's first error line: the cause (the lines after it are the consequences)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    return (errors or lines or ["no output"])[0]


async def handler_availability(runtime: OciRuntime) -> Availability:
    """runc checkpoints through the criu binary; crun only when built with CRIU (`+CRIU`)."""
    known = _handlers.get(runtime.path)
    if known is not None:
        return known
    result = await _probe_handler(runtime)
    _handlers[runtime.path] = result
    return result


async def _probe_handler(runtime: OciRuntime) -> Availability:
    if runtime.kind == "runc":
        return Availability(True)
    try:
        proc = await asyncio.create_subprocess_exec(
            runtime.path, "--version", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
    except OSError as exc:
        return Availability(False, f"{runtime.path} --version failed: {exc}")
    if "+CRIU" in out.decode(errors="replace").split():
        # Built with CRIU, yet oci/checkpoint.py drives runc's command line only.
        return Availability(False, f"{runtime.kind} checkpoint is not supported by crishim yet; use runc")
    return Availability(False, f"{runtime.path} is built without CRIU (no '+CRIU' in its --version)")


async def checkpoint_support(runtime: OciRuntime, wait: float = STATUS_WAIT) -> Availability | None:
    """Whether CheckpointContainer can work on this handler: its runtime first, then `criu check`.

    For Status, which must answer promptly: a first check slower than `wait` (CRIU's
    check takes seconds on a slow node) goes on in the background, and until it is
    done the answer is None, unknown; the next Status has it.
    """
    known = _known_support(runtime)
    if known is not None:
        return known
    task = asyncio.get_running_loop().create_task(_support(runtime))
    _background.add(task)
    task.add_done_callback(_background.discard)
    try:
        return await asyncio.wait_for(asyncio.shield(task), wait)
    except TimeoutError:
        return None


def _known_support(runtime: OciRuntime) -> Availability | None:
    handler = _handlers.get(runtime.path)
    if handler is None or not handler.available:
        return handler
    return _criu.get("criu")


async def _support(runtime: OciRuntime) -> Availability:
    can = await handler_availability(runtime)
    if not can.available:
        return can
    return await criu_availability()


async def require_criu(runtime: OciRuntime, handler_name: str, doing: str, feature: str) -> None:
    """FailedPrecondition unless the handler's runtime and this node's CRIU can do it: the
    handler's reason first (crun here has no CRIU), then `criu check`'s. `doing` completes
    "runtime handler X cannot ...", `feature` "... is unavailable on this node"."""
    can = await handler_availability(runtime)
    if not can.available:
        raise FailedPrecondition(f"runtime handler {handler_name!r} cannot {doing}: {can.reason}")
    criu = await criu_availability()
    if not criu.available:
        raise FailedPrecondition(f"{feature} is unavailable on this node: {criu.reason}")
