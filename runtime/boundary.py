"""The one place where Python exceptions become gRPC status codes.

Every servicer method is wrapped by `cri_rpc`: domain errors from any package
(runtime, oci, images, cgroups, network, streaming) map to a code through one
table of their classes, so those packages never import grpc. Anything unexpected
becomes INTERNAL with a request ID that also appears in the log line carrying
the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from crishim.cgroups import errors as cgroups_errors
from crishim.images import errors as images_errors
from crishim.oci import errors as oci_errors
from crishim.runtime import errors as runtime_errors
from crishim.runtime.network import errors as network_errors
from crishim.runtime.streaming import errors as streaming_errors

log = logging.getLogger("crishim.rpc")

# Every domain error class of every package, by class (a renamed class fails the
# import here instead of silently becoming INTERNAL). Subclasses not listed
# (oci RuntimeCommandError, images DataLoss, network PluginError...) take the
# code of their nearest listed base. tests/unit/runtime/test_boundary_codes.py
# checks that every class of every package maps to a code.
CODE_BY_ERROR: dict[type[BaseException], grpc.StatusCode] = {
    runtime_errors.NotFound: grpc.StatusCode.NOT_FOUND,
    runtime_errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    runtime_errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    runtime_errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    runtime_errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    runtime_errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    runtime_errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    runtime_errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    runtime_errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    runtime_errors.Internal: grpc.StatusCode.INTERNAL,
    oci_errors.NotFound: grpc.StatusCode.NOT_FOUND,
    oci_errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    oci_errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    oci_errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    oci_errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    oci_errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    oci_errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    oci_errors.Internal: grpc.StatusCode.INTERNAL,
    images_errors.NotFound: grpc.StatusCode.NOT_FOUND,
    images_errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    images_errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    images_errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    images_errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    images_errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    images_errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    images_errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    images_errors.Internal: grpc.StatusCode.INTERNAL,
    cgroups_errors.NotFound: grpc.StatusCode.NOT_FOUND,
    cgroups_errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    cgroups_errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    cgroups_errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    cgroups_errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    cgroups_errors.Internal: grpc.StatusCode.INTERNAL,
    network_errors.NotFound: grpc.StatusCode.NOT_FOUND,
    network_errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    network_errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    network_errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    network_errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    network_errors.Internal: grpc.StatusCode.INTERNAL,
    streaming_errors.NotFound: grpc.StatusCode.NOT_FOUND,
    streaming_errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    streaming_errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    streaming_errors.Internal: grpc.StatusCode.INTERNAL,
}

# Observers told of every call (metrics); set by the daemon at start-up.
CallObserver = Callable[[str, str, float], None]
_observers: list[CallObserver] = []


def add_call_observer(observer: CallObserver) -> None:
    _observers.append(observer)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC code for a domain error, walking the class hierarchy; None if unknown."""
    for cls in type(exc).__mro__:
        code = CODE_BY_ERROR.get(cls)
        if code is not None:
            return code
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return None


F = TypeVar("F", bound=Callable[..., Any])


# A call that takes longer is logged with its time and outcome, so a stall the caller gave
# up on (CANCELLED at its deadline) shows in the log beside what the daemon was doing.
SLOW_CALL_SECONDS = 10.0


def _notify(method: str, code: grpc.StatusCode, started: float) -> None:
    elapsed = time.monotonic() - started
    if elapsed >= SLOW_CALL_SECONDS:
        log.info("%s took %.1f s (%s)", method, elapsed, code.name)
    for observer in _observers:
        try:
            observer(method, code.name, elapsed)
        except Exception:  # a broken observer must never fail a CRI call
            log.exception("call observer failed")


def _default_message(method: str, exc: BaseException) -> str:
    """A message for a known error raised without one, such as a bare TimeoutError.

    asyncio.timeout() raises TimeoutError with no text when the caller's own deadline ends
    the call on the daemon's side; the class name alone would tell an operator nothing.
    """
    if isinstance(exc, TimeoutError):
        return f"{method}: the call's deadline passed before it finished; give it a longer timeout"
    return f"{method}: {type(exc).__name__}"


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> grpc.StatusCode:
    code = status_for(exc)
    if code is None:
        request_id = uuid.uuid4().hex[:12]
        log.exception("%s failed unexpectedly (request %s)", method, request_id)
        code = grpc.StatusCode.INTERNAL
        message = f"{method}: internal error ({type(exc).__name__}: {exc}); request id {request_id}"
    else:
        level = logging.INFO if code == grpc.StatusCode.NOT_FOUND else logging.WARNING
        log.log(level, "%s -> %s: %s", method, code.name, exc)
        message = str(exc) or _default_message(method, exc)
    # Status details travel in HTTP/2 trailers; keep them well under their limits.
    await context.abort(code, message[:8000])
    return code  # unreachable: abort raises


@contextlib.asynccontextmanager
async def _guard(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Times the call, converts any exception into the call's status, tells the observers."""
    started = time.monotonic()
    code = grpc.StatusCode.OK
    try:
        yield
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except grpc.aio.AbortError:
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary converts everything
        code = status_for(exc) or grpc.StatusCode.INTERNAL
        await _abort(context, method, exc)
    finally:
        _notify(method, code, started)


async def reject(method: str, context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """Ends a call that never reached its servicer (a request that did not decode) with exc's status."""
    started = time.monotonic()
    code = status_for(exc) or grpc.StatusCode.INTERNAL
    try:
        await _abort(context, method, exc)
    finally:
        _notify(method, code, started)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def cri_rpc(fn: F) -> F:
    """Wraps a unary or server-streaming servicer method in the error boundary."""
    method = fn.__name__

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with _guard(method, context):
                async for item in fn(self, request, context):
                    yield item

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _guard(method, context):
            result = fn(self, request, context)
            if isinstance(result, Awaitable):
                result = await result
            return result

    return wrapper  # type: ignore[return-value]
