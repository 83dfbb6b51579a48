"""Reference implementations of the StreamBackend operations on real tools.

- `exec_with_runtime`: `runc|crun --root ROOT exec`, on a pty of ours for TTY
  sessions (the runtime relays its container terminal to it), plain pipes otherwise.
- `exec_on_host`: the same session handling for a command run directly on the
  host (a real pty or real pipes); useful for node-level debugging and tests.
- `attach_via_conmon`: conmon's attach socket and control FIFO.
- `port_forward_in_netns`: a TCP connection to localhost inside a pod's network
  namespace.

Cancelling any of them ends the session: exec kills what it started, attach just
detaches (the container keeps running), port-forward closes the TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import threading
import tty as tty_mod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from crishim.runtime.streaming.errors import InvalidArgument, NotFound, Unavailable
from crishim.runtime.streaming.fdio import FdReader, FdWriter, copy, set_winsize
from crishim.runtime.streaming.streams import ByteReader, ByteWriter, TerminalSize
from crishim.runtime.streaming.terminal import resize_held_terminals

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 2.0
KILL_GRACE = 2.0
ATTACH_PIPE_STDOUT = 2  # conmon prefixes each buffer with the pipe it came from
ATTACH_PIPE_STDERR = 3
ATTACH_MAX_PACKET = 8192  # conmon reads at most one buffer per SEQPACKET message
CLONE_NEWNET = 0x40000000
SUN_PATH_MAX = 107


# ---------------------------------------------------------------- exec


async def exec_with_runtime(
    runtime_path: str,
    runtime_root: str,
    container_id: str,
    cmd: Sequence[str],
    tty: bool,
    stdin: ByteReader | None,
    stdout: ByteWriter | None,
    stderr: ByteWriter | None,
    resize: AsyncIterator[TerminalSize],
    *,
    runtime_args: Sequence[str] = (),
) -> int:
    """Run `cmd` in a running container through the OCI runtime and return its exit code.

    runc and crun take the process environment, cwd and user from the container's
    own spec when given only the arguments, as `kubectl exec` expects.
    """
    if not cmd:
        raise InvalidArgument("exec needs a command: cmd is empty")
    base = [runtime_path, "--root", runtime_root, *runtime_args, "exec"]
    if not tty:
        proc = await asyncio.create_subprocess_exec(
            *base,
            container_id,
            *cmd,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout is not None else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if stderr is not None else asyncio.subprocess.DEVNULL,
        )
        return await _supervise_pipes(proc, stdin, stdout, stderr, kill_group=False)

    # runc only hands the pty master to a console socket when it detaches, and a
    # detached exec's exit code is lost to us. So runc stays in the foreground on a
    # pty of ours: it allocates the container's terminal and relays it to our pty,
    # and on SIGWINCH copies our pty's size to the container's.
    master, slave = os.openpty()
    try:
        tty_mod.setraw(slave)
        proc = await asyncio.create_subprocess_exec(
            *base,
            "--tty",
            container_id,
            *cmd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)

    async def relay_size(size: TerminalSize) -> None:
        # runc copies our pty's size to the container's terminal on SIGWINCH; crun
        # 1.8 ignores SIGWINCH in a foreground exec, so the size is also set straight
        # on the terminal master the runtime holds.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGWINCH)
        await asyncio.to_thread(resize_held_terminals, proc.pid, size)

    return await _supervise_tty(proc, master, stdin, stdout, resize, kill_group=False, after_resize=relay_size)


async def exec_on_host(
    cmd: Sequence[str],
    tty: bool,
    stdin: ByteReader | None,
    stdout: ByteWriter | None,
    stderr: ByteWriter | None,
    resize: AsyncIterator[TerminalSize],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> int:
    """Run `cmd` on the host itself, with a fresh pty when `tty`; returns the exit code."""
    if not cmd:
        raise InvalidArgument("exec needs a command: cmd is empty")
    if shutil.which(cmd[0]) is None and not os.access(cmd[0], os.X_OK):
        raise NotFound(f"executable {cmd[0]!r} not found on the host PATH")
    if not tty:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout is not None else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if stderr is not None else asyncio.subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        return await _supervise_pipes(proc, stdin, stdout, stderr, kill_group=True)
    master, slave = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, env=env, cwd=cwd
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return await _supervise_tty(proc, master, stdin, stdout, resize, kill_group=True)


async def _supervise_pipes(
    proc: asyncio.subprocess.Process,
    stdin: ByteReader | None,
    stdout: ByteWriter | None,
    stderr: ByteWriter | None,
    *,
    kill_group: bool,
) -> int:
    outputs: list[asyncio.Task[None]] = []
    if stdout is not None and proc.stdout is not None:
        outputs.append(asyncio.create_task(copy(_StreamReaderAdapter(proc.stdout), stdout, close=False)))
    if stderr is not None and proc.stderr is not None:
        outputs.append(asyncio.create_task(copy(_StreamReaderAdapter(proc.stderr), stderr, close=False)))
    feeder = None
    if stdin is not None and proc.stdin is not None:
        feeder = asyncio.create_task(copy(stdin, _StreamWriterAdapter(proc.stdin)))
    try:
        code = await proc.wait()
        if outputs:
            # A background child may keep the pipes open; do not wait for it forever.
            await asyncio.wait(outputs, timeout=DRAIN_TIMEOUT)
        return _exit_code(code)
    finally:
        await _stop_process(proc, kill_group=kill_group)
        for task in [*outputs, *([feeder] if feeder else [])]:
            task.cancel()
        for task in [*outputs, *([feeder] if feeder else [])]:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await task


async def _supervise_tty(
    proc: asyncio.subprocess.Process,
    master: int,
    stdin: ByteReader | None,
    stdout: ByteWriter | None,
    resize: AsyncIterator[TerminalSize],
    *,
    kill_group: bool,
    after_resize: Callable[[TerminalSize], Awaitable[None]] | None = None,
) -> int:
    reader = FdReader(master, owns=False)
    writer = FdWriter(master, owns=False)

    async def apply_sizes() -> None:
        async for size in resize:
            with contextlib.suppress(OSError):
                set_winsize(master, size)
            if after_resize is not None:
                await after_resize(size)

    async def drain_output() -> None:
        while chunk := await reader.read():
            if stdout is not None:
                await stdout.write(chunk)

    tasks = [asyncio.create_task(apply_sizes()), asyncio.create_task(drain_output())]
    if stdin is not None:
        # A terminal has no end-of-input; once stdin ends we simply stop feeding it.
        tasks.append(asyncio.create_task(copy(stdin, writer, close=False)))
    try:
        code = await proc.wait()
        await asyncio.wait([tasks[1]], timeout=DRAIN_TIMEOUT)
        return _exit_code(code)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        # Closing the master hangs up the terminal: its session gets SIGHUP.
        os.close(master)
        await _stop_process(proc, kill_group=kill_group)
        if proc.stderr is not None:
            err = await proc.stderr.read()
            if err and proc.returncode not in (0, None):
                log.debug("exec stderr: %s", err.decode(errors="replace").strip())


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


async def attach_via_conmon(
    attach_socket_path: str,
    ctl_fifo_path: str | None,
    tty: bool,
    stdin: ByteReader | None,
    stdout: ByteWriter | None,
    stderr: ByteWriter | None,
    resize: AsyncIterator[TerminalSize],
) -> None:
    """Attach to a container through its conmon; returns when the container's output ends.

    Leaving (cancelling) only closes our socket: conmon and the container carry on.
    When stdin ends we shut down our write side, which makes conmon close the
    container's stdin unless it was started with --leave-stdin-open.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    dir_fd = -1
    try:
        path = attach_socket_path
        if len(path.encode()) > SUN_PATH_MAX:
            # sun_path holds 108 bytes; reach long paths through the directory's fd.
            dir_fd = os.open(os.path.dirname(path), os.O_PATH)
            path = f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}"
        try:
            await loop.sock_connect(sock, path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotFound(
                f"cannot attach: conmon's attach socket {attach_socket_path} is not there ({exc.strerror}); "
                "is the container running?"
            ) from exc

        async def feed() -> None:
            assert stdin is not None
            while chunk := await stdin.read():
                for off in range(0, len(chunk), ATTACH_MAX_PACKET):
                    await loop.sock_sendall(sock, chunk[off : off + ATTACH_MAX_PACKET])
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

        async def apply_sizes() -> None:
            async for size in resize:
                if ctl_fifo_path is not None:
                    await asyncio.to_thread(write_resize, ctl_fifo_path, size)

        helpers = [asyncio.create_task(apply_sizes())]
        if stdin is not None:
            helpers.append(asyncio.create_task(feed()))
        try:
            while True:
                packet = await loop.sock_recv(sock, 65536)
                if not packet:
                    break
                target = stdout if packet[0] == ATTACH_PIPE_STDOUT else stderr
                if packet[0] == ATTACH_PIPE_STDERR and tty:
                    target = stdout
                if target is not None and len(packet) > 1 and packet[0] in (ATTACH_PIPE_STDOUT, ATTACH_PIPE_STDERR):
                    await target.write(packet[1:])
        except ConnectionResetError:
            pass
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
    finally:
        sock.close()
        if dir_fd >= 0:
            os.close(dir_fd)


def write_resize(ctl_fifo_path: str, size: TerminalSize) -> None:
    """conmon's control FIFO takes 'TYPE HEIGHT WIDTH\\n'; type 1 is a terminal resize."""
    try:
        fd = os.open(ctl_fifo_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):
            return  # conmon is gone: nothing left to resize
        raise
    try:
        os.write(fd, f"1 {size.height} {size.width}\n".encode())
    finally:
        os.close(fd)


# ---------------------------------------------------------------- port-forward


async def port_forward_in_netns(
    netns_path: str | None,
    port: int,
    reader: ByteReader,
    writer: ByteWriter,
) -> None:
    """Connect to localhost:`port` inside a network namespace and pump bytes both ways.

    `netns_path` None means the host's namespace (host-network pods). The socket is
    created by a short-lived thread that enters the namespace; a socket stays in the
    namespace it was created in, so the event loop can use it from here on.
    """
    if not 0 < port < 65536:
        raise InvalidArgument(f"port {port} is out of range; name a TCP port 1-65535")
    loop = asyncio.get_running_loop()
    sock: socket.socket | None = None
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
        sock = candidate
        break
    if sock is None:
        raise Unavailable(
            f"cannot connect to localhost:{port} in the pod's network namespace ({'; '.join(failures)}); "
            "is anything listening on that port?"
        )
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
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await sender
        tcp_writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await tcp_writer.wait_closed()


async def socket_in_netns(netns_path: str | None, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket created inside the network namespace at `netns_path` (None: our own)."""
    if netns_path is None:
        return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[socket.socket] = loop.create_future()

    def deliver(result: socket.socket | BaseException) -> None:
        if fut.cancelled():
            if isinstance(result, socket.socket):
                result.close()
        elif isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)

    def work() -> None:
        # A dedicated thread: if switching back failed it would stay in the pod's
        # namespace, and it exits right after, so no pooled thread is ever tainted.
        try:
            sock = _create_in_netns(netns_path, family)
        except OSError as exc:
            loop.call_soon_threadsafe(deliver, exc)
        else:
            loop.call_soon_threadsafe(deliver, sock)

    threading.Thread(target=work, name="netns-socket", daemon=True).start()
    try:
        return await fut
    except FileNotFoundError as exc:
        raise NotFound(f"network namespace {netns_path} does not exist") from exc


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _create_in_netns(netns_path: str, family: int) -> socket.socket:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


__all__ = [
    "attach_via_conmon",
    "exec_on_host",
    "exec_with_runtime",
    "port_forward_in_netns",
    "socket_in_netns",
    "write_resize",
]
