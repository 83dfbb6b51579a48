"""Exec and attach sessions: the Kubernetes remotecommand protocols over SPDY or WebSocket.

Stream roles (both transports): stdin (client -> us), stdout and stderr (us ->
client), error (us -> client: the outcome), resize (client -> us: JSON sizes).
From v4 the error stream carries a metav1.Status as JSON, which is how client-go
learns the exit code; older versions carry just an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from crishim.runtime.streaming.errors import StreamingError
from crishim.runtime.streaming.spdy import SpdyConnection, SpdyStream
from crishim.runtime.streaming.streams import (
    STREAM_CREATION_TIMEOUT,
    ByteReader,
    ByteWriter,
    SessionStreams,
    StreamBackend,
    no_resize,
    resize_events,
)
from crishim.runtime.streaming.tokens import AttachRequest, ExecRequest
from crishim.runtime.streaming.websocket import (
    BASE64_CHANNEL,
    CHANNEL,
    V4_BASE64_CHANNEL,
    V4_CHANNEL,
    V5_CHANNEL,
    ChannelConnection,
)

log = logging.getLogger(__name__)

# Over SPDY, v5 is v4 (its stdin close signal only matters on WebSocket); client-go
# offers it first and the kubelet accepts it.
SPDY_V5 = "v5.channel.k8s.io"
SPDY_V4 = "v4.channel.k8s.io"
SPDY_V3 = "v3.channel.k8s.io"
SPDY_V2 = "v2.channel.k8s.io"
SPDY_V1 = "channel.k8s.io"
SPDY_PROTOCOLS = (SPDY_V5, SPDY_V4, SPDY_V3, SPDY_V2, SPDY_V1)
WEBSOCKET_PROTOCOLS = (V5_CHANNEL, V4_CHANNEL, V4_BASE64_CHANNEL, BASE64_CHANNEL, CHANNEL)

STREAM_ERROR = "error"
STREAM_STDIN = "stdin"
STREAM_STDOUT = "stdout"
STREAM_STDERR = "stderr"
STREAM_RESIZE = "resize"

CH_STDIN, CH_STDOUT, CH_STDERR, CH_ERROR, CH_RESIZE = range(5)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a session ended, rendered for the error stream by `status_json` or `status_text`."""

    exit_code: int | None = 0
    cmd: tuple[str, ...] = ()
    error: str | None = None


def status_json(outcome: Outcome) -> bytes:
    """metav1.Status as client-go's v4 decoder expects it."""
    if outcome.error is not None:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": outcome.error,
            "reason": "InternalError",
            "details": {"causes": [{"message": outcome.error}]},
            "code": 500,
        }
    elif outcome.exit_code:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": status_text(outcome),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(outcome.exit_code)}]},
        }
    else:
        status = {"metadata": {}, "status": "Success"}
    return json.dumps(status, separators=(",", ":")).encode()


def status_text(outcome: Outcome) -> str:
    """The pre-v4 error stream: empty on success, else a message."""
    if outcome.error is not None:
        return outcome.error
    if outcome.exit_code:
        return (
            f"command terminated with non-zero exit code: error executing command {list(outcome.cmd)}, "
            f"exit code {outcome.exit_code}"
        )
    return ""


async def run_session(
    request: ExecRequest | AttachRequest,
    backend: StreamBackend,
    *,
    stdin: ByteReader | None,
    stdout: ByteWriter | None,
    stderr: ByteWriter | None,
    resize: ByteReader | None,
    error: ByteWriter,
    v4_status: bool,
) -> None:
    """Run the backend, then close the output streams and report the outcome on `error`."""
    sizes = resize_events(resize) if request.tty else no_resize()
    streams = SessionStreams(request.tty, stdin, stdout, stderr, sizes)
    try:
        if isinstance(request, ExecRequest):
            code = await backend.exec(request.container_id, list(request.cmd), streams)
            outcome = Outcome(exit_code=code, cmd=request.cmd)
        else:
            await backend.attach(request.container_id, streams)
            outcome = Outcome()
    except StreamingError as exc:
        outcome = Outcome(error=str(exc))
    except OSError as exc:
        log.warning("streaming session for %s failed: %s", request.container_id, exc)
        outcome = Outcome(error=f"{type(exc).__name__}: {exc}")
    for out in (stdout, stderr):
        if out is not None:
            await out.close()
    message = status_json(outcome) if v4_status else status_text(outcome).encode()
    if message:
        await error.write(message)
    await error.close()


async def serve_spdy(
    conn: SpdyConnection,
    protocol: str,
    request: ExecRequest | AttachRequest,
    backend: StreamBackend,
    stream_timeout: float = STREAM_CREATION_TIMEOUT,
) -> None:
    """Wait for the client's streams, then run the session while the connection lives."""
    expected = {STREAM_ERROR}
    if request.stdin:
        expected.add(STREAM_STDIN)
    if request.stdout:
        expected.add(STREAM_STDOUT)
    if request.stderr and not request.tty:
        expected.add(STREAM_STDERR)
    if request.tty and protocol in (SPDY_V5, SPDY_V4, SPDY_V3):
        expected.add(STREAM_RESIZE)
    streams: dict[str, SpdyStream] = {}
    try:
        async with asyncio.timeout(stream_timeout):
            while not expected <= streams.keys():
                stream = await conn.accept()
                if stream is None:
                    return
                kind = stream.header("streamtype")
                if kind not in expected or kind in streams:
                    log.debug("refusing unexpected SPDY stream type %r", kind)
                    await stream.reset()
                    continue
                await stream.reply()
                streams[kind] = stream
    except TimeoutError:
        log.info("client opened only %s of streams %s in time", sorted(streams), sorted(expected))
        return
    session = asyncio.create_task(
        run_session(
            request,
            backend,
            stdin=streams.get(STREAM_STDIN),
            stdout=streams.get(STREAM_STDOUT),
            stderr=streams.get(STREAM_STDERR),
            resize=streams.get(STREAM_RESIZE),
            error=streams[STREAM_ERROR],
            v4_status=protocol in (SPDY_V5, SPDY_V4),
        )
    )
    await _until_done_or_gone(session, conn.wait_closed())


async def serve_websocket(
    conn: ChannelConnection,
    request: ExecRequest | AttachRequest,
    backend: StreamBackend,
) -> None:
    """Channels 0-4 as the kubelet lays them out; only those the request enables carry data."""
    stdin = conn.reader(CH_STDIN) if request.stdin else None
    resize = conn.reader(CH_RESIZE) if request.tty else None
    stdout = conn.writer(CH_STDOUT) if request.stdout else None
    stderr = conn.writer(CH_STDERR) if request.stderr and not request.tty else None
    error = conn.writer(CH_ERROR)
    # An empty frame on the first writable channel tells the client the session is live.
    await (stdout or stderr or error).write(b"")
    session = asyncio.create_task(
        run_session(
            request,
            backend,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            resize=resize,
            error=error,
            v4_status=conn.protocol in (V5_CHANNEL, V4_CHANNEL, V4_BASE64_CHANNEL),
        )
    )
    await _until_done_or_gone(session, conn.wait_closed())


async def _until_done_or_gone(session: asyncio.Task[None], gone: Coroutine[Any, Any, object]) -> None:
    """Finish with the session, or cancel it (the backend then kills its process) if the client left."""
    gone_task = asyncio.ensure_future(gone)
    try:
        await asyncio.wait({session, gone_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone_task.cancel()
        if not session.done():
            session.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await session
