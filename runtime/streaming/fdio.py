"""Non-blocking file descriptors (pipes, pty masters) as ByteReader/ByteWriter on the event loop.

Blocking reads in threads would take one pool thread per stream; with ten
interactive sessions on a two-core node the default pool runs dry and every
other `to_thread` call stalls. `add_reader`/`add_writer` cost nothing idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import termios
from collections.abc import Callable

from crishim.runtime.streaming.streams import ByteReader, ByteWriter, TerminalSize

CHUNK = 32 * 1024

# loop.add_reader or loop.add_writer: (fd, callback, *args).
_Watch = Callable[[int, Callable[[asyncio.Future[None]], None], asyncio.Future[None]], object]


def set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


class _OwnedFd:
    """A non-blocking fd, closed with this object only if it `owns` it."""

    def __init__(self, fd: int, *, owns: bool) -> None:
        self.fd = fd
        self._owns = owns
        set_nonblocking(fd)

    async def _until_ready(self, watch: _Watch, unwatch: Callable[[int], object]) -> None:
        """Wait until the loop's `watch` (add_reader or add_writer) says the fd is ready."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        watch(self.fd, _set_done, fut)
        try:
            await fut
        finally:
            unwatch(self.fd)

    def _close_owned(self) -> bool:
        """Close the fd if this object owns it and it is open; False when there was nothing to close."""
        if not (self._owns and self.fd >= 0):
            return False
        with contextlib.suppress(OSError):
            os.close(self.fd)
        return True


class FdReader(_OwnedFd):
    """Reads a non-blocking fd; EOF on 0 bytes, or EIO (a pty master whose slave side is gone)."""

    def __init__(self, fd: int, *, owns: bool = True) -> None:
        super().__init__(fd, owns=owns)
        self._eof = False

    async def read(self) -> bytes:
        if self._eof:
            return b""
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = os.read(self.fd, CHUNK)
            except BlockingIOError:
                await self._until_ready(loop.add_reader, loop.remove_reader)
                continue
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    data = b""
                else:
                    raise
            if not data:
                self._eof = True
            return data

    def close(self) -> None:
        if self._close_owned():
            self.fd = -1
            self._eof = True


class FdWriter(_OwnedFd):
    """Writes to a non-blocking fd; a vanished reader (EPIPE/EIO) makes later writes no-ops."""

    def __init__(self, fd: int, *, owns: bool = True) -> None:
        super().__init__(fd, owns=owns)
        self._broken = False

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view and not self._broken and self.fd >= 0:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
            except BlockingIOError:
                await self._until_ready(loop.add_writer, loop.remove_writer)
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EIO, errno.EBADF):
                    self._broken = True
                else:
                    raise

    async def close(self) -> None:
        self._close_owned()
        self.fd = -1


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def set_winsize(fd: int, size: TerminalSize) -> None:
    """TIOCSWINSZ on a pty: the kernel sends SIGWINCH to the foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))


async def copy(src: ByteReader, dst: ByteWriter, *, close: bool = True) -> None:
    """Copy until EOF, then (optionally) half-close the destination."""
    try:
        while chunk := await src.read():
            await dst.write(chunk)
    finally:
        if close:
            await dst.close()
