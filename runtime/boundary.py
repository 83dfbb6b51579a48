"""The one place where Python exceptions become gRPC status codes.

Every servicer method is wrapped by `cri_rpc`: domain errors from any package
(runtime, oci, images, cgroups, network) map to a code by their class name, so
those packages never import grpc. Anything unexpected becomes INTERNAL with a
request ID that also appears in the log line carrying the traceback.
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
from typing import Any, TypeVar

import grpc

log = logging.getLogger("crishim.rpc")

CODE_BY_ERROR_NAME: dict[str, grpc.StatusCode] = {
    "NotFound": grpc.StatusCode.NOT_FOUND,
    "AlreadyExists": grpc.StatusCode.ALREADY_EXISTS,
    "InvalidArgument": grpc.StatusCode.INVALID_ARGUMENT,
    "FailedPrecondition": grpc.StatusCode.FAILED_PRECONDITION,
    "PermissionDenied": grpc.StatusCode.PERMISSION_DENIED,
    "Unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "Unavailable": grpc.StatusCode.UNAVAILABLE,
    "DeadlineExceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    "ResourceExhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "Unimplemented": grpc.StatusCode.UNIMPLEMENTED,
    "Internal": grpc.StatusCode.INTERNAL,
    "Aborted": grpc.StatusCode.ABORTED,
}

# Observers told of every call (metrics); set by the daemon at start-up.
CallObserver = Callable[[str, str, float], None]
_observers: list[CallObserver] = []


def add_call_observer(observer: CallObserver) -> None:
    _observers.append(observer)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC code for a domain error, walking the class hierarchy; None if unknown."""
    for cls in type(exc).__mro__:
        code = CODE_BY_ERROR_NAME.get(cls.__name__)
        if code is not None:
            return code
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return None


F = TypeVar("F", bound=Callable[..., Any])


def _notify(method: str, code: grpc.StatusCode, started: float) -> None:
    elapsed = time.monotonic() - started
    for observer in _observers:
        try:
            observer(method, code.name, elapsed)
        except Exception:  # a broken observer must never fail a CRI call
            log.exception("call observer failed")


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
        message = str(exc) or type(exc).__name__
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
