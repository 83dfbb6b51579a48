"""Status' per-handler checkpoint answer: prompt even while a first `criu check` runs, and then CRIU's."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from crishim.oci.runtime import OciRuntime
from crishim.runtime.checkpoint import availability
from crishim.runtime.checkpoint.availability import Availability, checkpoint_support, criu_availability

pytestmark = pytest.mark.root  # `criu check` needs root


@pytest.fixture(autouse=True)
def unchecked() -> Iterator[None]:
    """Each test starts from a daemon that has not run `criu check` or probed a handler yet."""
    availability._criu.clear()
    availability._handlers.clear()
    yield
    availability._criu.clear()
    availability._handlers.clear()


def _runtime(kind: str) -> OciRuntime:
    path = shutil.which(kind)
    if path is None:
        pytest.skip(f"{kind} is not installed")
    return OciRuntime(kind, path, Path("/nonexistent"), "crun" if kind == "crun" else "runc")


async def test_a_check_still_running_is_unknown_and_the_next_answer_is_criu_s() -> None:
    runc = _runtime("runc")
    assert await checkpoint_support(runc, wait=0) is None  # the check goes on in the background
    for _ in range(600):  # up to availability.CHECK_TIME_LIMIT and more, for its answer to be kept
        if "criu" in availability._criu:
            break
        await asyncio.sleep(0.1)
    answer = await checkpoint_support(runc, wait=0)  # kept: no new check, answered at once
    assert answer is not None
    assert answer == await criu_availability()
    if not answer.available:
        assert " check failed: " in answer.reason or "is not installed" in answer.reason, answer


async def test_a_handler_without_criu_is_answered_without_running_criu() -> None:
    answer = await checkpoint_support(_runtime("crun"))
    assert isinstance(answer, Availability)
    assert answer.available is False
    assert "crun" in answer.reason, answer
    assert "criu" not in availability._criu  # the handler's own answer came first
