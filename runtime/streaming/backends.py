"""Reference implementations of the StreamBackend operations on real tools.

- `exec_with_runtime`: `runc|crun exec` (OciRuntime.exec_command), on a pty of
  ours for TTY sessions (the runtime relays its container terminal to it), plain
  pipes otherwise.
- `exec_on_host`: the same session handling for a command run directly on the
  host (a real pty or real pipes); useful for node-level debugging and tests.
- `attach_via_conmon`: conmon's attach socket and control FIFO (oci/conmon.py
  names them and their framing).
- `port_forward_in_netns`: a TCP connection to localhost inside a pod's network
  namespace.

Cancelling any of them ends the session: exec kills what it started, attach just
detaches (the container keeps running), port-forward closes the TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tty as tty_mod
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from crishim.oci import conmon
from crishim.oci.runtime import OciRuntime, collect_exec_orphan, read_pid
from crishim.runtime.network import errors as network_errors
from crishim.runtime.network import netns
from crishim.runtime.streaming.errors import InvalidArgument, NotFound, Unavailable
from crishim.runtime.streaming.fdio import FdReader, FdWriter, copy, set_winsize
from crishim.runtime.streaming.streams import ByteReader, ByteWriter, SessionStreams, TerminalSize
from crishim.runtime.streaming.terminal import resize_held_terminals

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 2.0
KILL_GRACE = 2.0
SUN_PATH_MAX = 107


# ---------------------------------------------------------------- exec


async def exec_with_runtime(runtime: OciRuntime, container_id: str, cmd: Sequence[str], streams: SessionStreams) -> int:
    """Run `cmd` in a running container through the OCI runtime and return its exit code."""
    if not cmd:
        raise InvalidArgument("exec needs a command: cmd is empty")
    with runtime.exec_scratch() as scratch:
        pid_file = Path(scratch, "pid")
        command = runtime.exec_command(container_id, cmd, tty=streams.tty, pid_file=pid_file)
        try:
            return await _exec_in(command, streams)
        finally:
            # What the runtime process left behind (crun, of a command it could not execute).
            await asyncio.shield(collect_exec_orphan(read_pid(pid_file)))


async def _exec_in(command: list[str], streams: SessionStreams) -> int:
    if not streams.tty:
        proc = await _spawn_with_pipes(command, streams)
        return await _supervise_pipes(proc, streams, kill_group=False)

    # runc only hands the pty master to a console socket when it detaches, and a
    # detached exec's exit code is lost to us. So runc stays in the foreground on a
    # pty of ours: it allocates the container's terminal and relays it to our pty,
    # and on SIGWINCH copies our pty's size to the container's.
    proc, master = await _spawn_on_pty(command, raw=True)

    async def relay_size(size: TerminalSize) -> None:
        # runc copies our pty's size to the container's terminal on SIGWINCH; crun
        # 1.8 ignores SIGWINCH in a foreground exec, so the size is also set straight
        # on the terminal master the runtime holds.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGWINCH)
        await asyncio.to_thread(resize_held_terminals, proc.pid, size)

    return await _supervise_tty(proc, master, streams, kill_group=False, after_resize=relay_size)


async def exec_on_host(
    cmd: Sequence[str], streams: SessionStreams, *, env: dict[str, str] | None = None, cwd: str | None = None
) -> int:
    """Run `cmd` on the host itself, with a fresh pty when `tty`; returns the exit code."""
    if not cmd:
        raise InvalidArgument("exec needs a command: cmd is empty")
    if shutil.which(cmd[0]) is None and not os.access(cmd[0], os.X_OK):
        raise NotFound(f"executable {cmd[0]!r} not found on the host PATH")
    if not streams.tty:
        proc = await _spawn_with_pipes(cmd, streams, start_new_session=True, env=env, cwd=cwd)
        return await _supervise_pipes(proc, streams, kill_group=True)
    proc, master = await _spawn_on_pty(cmd, env=env, cwd=cwd)
    return await _supervise_tty(proc, master, streams, kill_group=True)


async def _spawn_with_pipes(cmd: Sequence[str], streams: SessionStreams, **kwargs: Any) -> asyncio.subprocess.Process:
    """A pipe for each stream the client opened; /dev/null for the others."""

    def pipe_if(wanted: object) -> int:
        return asyncio.subprocess.PIPE if wanted is not None else asyncio.subprocess.DEVNULL

    return await asyncio.create_subprocess_exec(
        *cmd, stdin=pipe_if(streams.stdin), stdout=pipe_if(streams.stdout), stderr=pipe_if(streams.stderr), **kwargs
    )


async def _spawn_on_pty(
    cmd: Sequence[str], *, raw: bool = False, **kwargs: Any
) -> tuple[asyncio.subprocess.Process, int]:
    """The process in a session of its own on a new pty; returns it and the pty master."""
    master, slave = os.openpty()
    try:
        if raw:
            tty_mod.setraw(slave)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, **kwargs
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return proc, master


async def _supervise_pipes(proc: asyncio.subprocess.Process, streams: SessionStreams, *, kill_group: bool) -> int:
    outputs: list[asyncio.Task[None]] = []
    if streams.stdout is not None and proc.stdout is not None:
        outputs.append(asyncio.create_task(copy(_StreamReaderAdapter(proc.stdout), streams.stdout, close=False)))
    if streams.stderr is not None and proc.stderr is not None:
        outputs.append(asyncio.create_task(copy(_StreamReaderAdapter(proc.stderr), streams.stderr, close=False)))
    feeder = None
    if streams.stdin is not None and proc.stdin is not None:
        feeder = asyncio.create_task(copy(streams.stdin, _StreamWriterAdapter(proc.stdin)))
    try:
        code = await proc.wait()
        if outputs:
            # A background child may keep the pipes open; do not wait for it forever.
            await asyncio.wait(outputs, timeout=DRAIN_TIMEOUT)
        return _exit_code(code)
    finally:
        await _stop_process(proc, kill_group=kill_group)
        await _cancel_all([*outputs, *([feeder] if feeder else [])], ConnectionError, OSError)


async def _supervise_tty(
    proc: asyncio.subprocess.Process,
    master: int,
    streams: SessionStreams,
    *,
    kill_group: bool,
    after_resize: Callable[[TerminalSize], Awaitable[None]] | None = None,
) -> int:
    reader = FdReader(master, owns=False)
    writer = FdWriter(master, owns=False)

    async def apply_sizes() -> None:
        async for size in streams.resize:
            with contextlib.suppress(OSError):
                set_winsize(master, size)
            if after_resize is not None:
                await after_resize(size)

    async def drain_output() -> None:
        while chunk := await reader.read():
            if streams.stdout is not None:
                await streams.stdout.write(chunk)

    tasks = [asyncio.create_task(apply_sizes()), asyncio.create_task(drain_output())]
    if streams.stdin is not None:
        # A terminal has no end-of-input; once stdin ends we simply stop feeding it.
        tasks.append(asyncio.create_task(copy(streams.stdin, writer, close=False)))
    try:
        code = await proc.wait()
        await asyncio.wait([tasks[1]], timeout=DRAIN_TIMEOUT)
        return _exit_code(code)
    finally:
        await _cancel_all(tasks, OSError)
        # Closing the master hangs up the terminal: its session gets SIGHUP.
        os.close(master)
        await _stop_process(proc, kill_group=kill_group)
        if proc.stderr is not None:
            err = await proc.stderr.read()
            if err and proc.returncode not in (0, None):
                log.debug("exec stderr: %s", err.decode(errors="replace").strip())


async def _cancel_all(tasks: list[asyncio.Task[None]], *ignored: type[BaseException]) -> None:
    """Cancels the session's helper tasks and waits for them; errors of a closing stream are expected."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, *ignored):
            await task


async def _stop_process(proc: asyncio.subprocess.Process, *, kill_group: bool) -> None:
    """Ask politely (SIGTERM, which runc forwards to the exec'd process), then SIGKILL."""
    if proc.returncode is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            if kill_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_GRACE)
            return
        except TimeoutError:
            continue


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


class _StreamReaderAdapter:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def read(self) -> bytes:
        return await self._reader.read(32 * 1024)


class _StreamWriterAdapter:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass  # the process closed its stdin; drop the rest as a terminal would

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self._writer.close()


# ---------------------------------------------------------------- attach


async def attach_via_conmon(bundle: Path, streams: SessionStreams) -> None:
    """Attach to a container through the conmon of its `bundle`; returns when the container's output ends.

    Leaving (cancelling) only closes our socket: conmon and the container carry on.
    When stdin ends we shut down our write side, which makes conmon close the
    container's stdin unless it was started with --leave-stdin-open.
    """
    loop = asyncio.get_running_loop()
    with _attach_socket(conmon.attach_socket_path(bundle)) as sock:
        await _connect_attach_socket(sock, conmon.attach_socket_path(bundle))

        async def feed(stdin: ByteReader) -> None:
            while chunk := await stdin.read():
                for off in range(0, len(chunk), conmon.ATTACH_MAX_PACKET):
                    await loop.sock_sendall(sock, chunk[off : off + conmon.ATTACH_MAX_PACKET])
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

        async def apply_sizes() -> None:
            async for size in streams.resize:
                await asyncio.to_thread(conmon.resize_terminal, bundle, size.width, size.height)

        helpers = [asyncio.create_task(apply_sizes())]
        if streams.stdin is not None:
            helpers.append(asyncio.create_task(feed(streams.stdin)))
        try:
            await _relay_attach_output(sock, streams)
        finally:
            await _cancel_all(helpers, OSError)


@contextlib.contextmanager
def _attach_socket(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def _connect_attach_socket(sock: socket.socket, path: Path) -> None:
    loop = asyncio.get_running_loop()
    dir_fd = -1
    target = str(path)
    try:
        if len(target.encode()) > SUN_PATH_MAX:
            # sun_path holds 108 bytes; reach long paths through the directory's fd.
            dir_fd = os.open(path.parent, os.O_PATH)
            target = f"/proc/self/fd/{dir_fd}/{path.name}"
        await loop.sock_connect(sock, target)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NotFound(
            f"cannot attach: conmon's attach socket {path} is not there ({exc.strerror}); is the container running?"
        ) from exc
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)


async def _relay_attach_output(sock: socket.socket, streams: SessionStreams) -> None:
    """conmon's packets to the client's stdout and stderr (both to stdout on a terminal)."""
    loop = asyncio.get_running_loop()
    targets = {
        conmon.ATTACH_PIPE_STDOUT: streams.stdout,
        conmon.ATTACH_PIPE_STDERR: streams.stdout if streams.tty else streams.stderr,
    }
    with contextlib.suppress(ConnectionResetError):
        while packet := await loop.sock_recv(sock, 65536):
            target = targets.get(packet[0])
            if target is not None and len(packet) > 1:
                await target.write(packet[1:])


# ---------------------------------------------------------------- port-forward


async def port_forward_in_netns(
    netns_path: str | None,
    port: int,
    reader: ByteReader,
    writer: ByteWriter,
) -> None:
    """Connect to localhost:`port` inside a network namespace and pump bytes both ways.

    `netns_path` None means the host's namespace (host-network pods).
    """
    if not 0 < port < 65536:
        raise InvalidArgument(f"port {port} is out of range; name a TCP port 1-65535")
    sock = await _connect_localhost(netns_path, port)
    tcp_reader, tcp_writer = await asyncio.open_connection(sock=sock)

    async def to_pod() -> None:
        while chunk := await reader.read():
            tcp_writer.write(chunk)
            await tcp_writer.drain()
        if tcp_writer.can_write_eof():
            tcp_writer.write_eof()

    sender = asyncio.create_task(to_pod())
    try:
        while chunk := await tcp_reader.read(64 * 1024):
            await writer.write(chunk)
        await writer.close()
        # The pod closed its side; anything the client still sends has no reader.
    finally:
        await _cancel_all([sender], ConnectionError, OSError)
        tcp_writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await tcp_writer.wait_closed()


async def _connect_localhost(netns_path: str | None, port: int) -> socket.socket:
    """A socket connected to localhost:`port` in the namespace, over IPv4 or else IPv6."""
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    for family, host, label in ((socket.AF_INET, "127.0.0.1", "IPv4"), (socket.AF_INET6, "::1", "IPv6")):
        candidate = await socket_in_netns(netns_path, family)
        candidate.setblocking(False)
        try:
            await loop.sock_connect(candidate, (host, port))
        except OSError as exc:
            candidate.close()
            failures.append(f"{label} {host}: {os.strerror(exc.errno) if exc.errno else exc}")
            continue
        return candidate
    raise Unavailable(
        f"cannot connect to localhost:{port} in the pod's network namespace ({'; '.join(failures)}); "
        "is anything listening on that port?"
    )


async def socket_in_netns(netns_path: str | None, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket created inside the network namespace at `netns_path` (None: our own).

    A socket stays in the namespace it was created in, so the event loop can use
    it from here on.
    """
    if netns_path is None:
        return _tcp_socket(family)
    try:
        return await netns.run_in(netns_path, _tcp_socket, family, discard=socket.socket.close)
    except network_errors.NotFound as exc:
        raise NotFound(f"network namespace {netns_path} does not exist") from exc


def _tcp_socket(family: int) -> socket.socket:
    return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)


__all__ = [
    "attach_via_conmon",
    "exec_on_host",
    "exec_with_runtime",
    "port_forward_in_netns",
    "socket_in_netns",
]
