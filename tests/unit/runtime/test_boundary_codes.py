"""The error table of runtime/boundary.py: every package's exception class has its code; slow calls are logged."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from types import ModuleType
from typing import Any, NoReturn

import grpc
import pytest
from crishim.cgroups import errors as cgroups_errors
from crishim.images import errors as images_errors
from crishim.oci import errors as oci_errors
from crishim.runtime import boundary
from crishim.runtime import errors as runtime_errors
from crishim.runtime.network import errors as network_errors
from crishim.runtime.streaming import errors as streaming_errors

# Bases and errors that are bugs when they reach a caller: INTERNAL with a request ID.
UNMAPPED = {
    cgroups_errors.CgroupError,
    images_errors.ImageError,
    oci_errors.OciError,
    runtime_errors.RuntimeError_,
    runtime_errors.ConfigError,
    network_errors.NetworkError,
    streaming_errors.StreamingError,
    images_errors.UnpackAborted,
}

# A class named after a code gets that code; the rest are named here.
EXPECTED_BY_CLASS = {
    oci_errors.RuntimeCommandError: grpc.StatusCode.INTERNAL,
    images_errors.DataLoss: grpc.StatusCode.INTERNAL,
    images_errors.LayerEscape: grpc.StatusCode.INVALID_ARGUMENT,
    network_errors.PluginError: grpc.StatusCode.INTERNAL,
    streaming_errors.ProtocolError: grpc.StatusCode.INTERNAL,
}

MODULES: list[ModuleType] = [
    cgroups_errors,
    images_errors,
    oci_errors,
    runtime_errors,
    network_errors,
    streaming_errors,
]


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for module in MODULES:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


def _code_name(cls: type[BaseException]) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()


def _instance(cls: type[BaseException]) -> BaseException:
    try:
        return cls("message")
    except TypeError:
        return cls.__new__(cls)


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_exception_class_maps_to_its_code(cls: type[BaseException]) -> None:
    code = boundary.status_for(_instance(cls))
    if cls in UNMAPPED:
        assert code is None
    elif cls in EXPECTED_BY_CLASS:
        assert code == EXPECTED_BY_CLASS[cls]
    else:
        assert code is not None, f"{cls.__module__}.{cls.__name__} has no gRPC code in boundary.CODE_BY_ERROR"
        assert code.name == _code_name(cls)


def test_timeout_is_deadline_exceeded() -> None:
    assert boundary.status_for(TimeoutError()) == grpc.StatusCode.DEADLINE_EXCEEDED


class _Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.code = code
        self.details = details
        raise grpc.aio.AbortError()


class _Servicer:
    @boundary.cri_rpc
    async def Version(self, request: Any, context: Any) -> Any:
        raise ZeroDivisionError("boom")

    @boundary.cri_rpc
    async def Status(self, request: Any, context: Any) -> Any:
        raise images_errors.NotFound("image busybox is not in the store")

    @boundary.cri_rpc
    async def PullImage(self, request: Any, context: Any) -> Any:
        async with asyncio.timeout(0):
            await asyncio.sleep(1)


def _call(method: str) -> _Context:
    context = _Context()

    async def run() -> None:
        with pytest.raises(grpc.aio.AbortError):
            await getattr(_Servicer(), method)(None, context)

    asyncio.run(run())
    return context


def test_unknown_exception_becomes_internal_with_a_request_id() -> None:
    context = _call("Version")
    assert context.code == grpc.StatusCode.INTERNAL
    assert re.search(r"Version: internal error \(ZeroDivisionError: boom\); request id [0-9a-f]{12}$", context.details)


def test_domain_error_keeps_its_message() -> None:
    context = _call("Status")
    assert context.code == grpc.StatusCode.NOT_FOUND
    assert context.details == "image busybox is not in the store"


def test_a_deadline_that_ends_the_call_in_the_daemon_says_so() -> None:
    context = _call("PullImage")
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert context.details == "PullImage: the call's deadline passed before it finished; give it a longer timeout"


def test_a_slow_call_is_logged_with_its_time_and_outcome(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="crishim.rpc"):
        boundary._notify("RunPodSandbox", grpc.StatusCode.CANCELLED, time.monotonic() - 61.0)
        boundary._notify("Version", grpc.StatusCode.OK, time.monotonic())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("RunPodSandbox took 61.")
    assert lines[0].endswith(" s (CANCELLED)")
