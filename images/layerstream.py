"""A layer's byte stream on its way to the extractor, in the unpack thread.

Chunks come from the download, read in the unpack thread itself (`BodySource`),
or from a file (`file_source`); `CompressedStream` hands each to
the blob writer (which hashes it), and `DecompressedStream` inflates gzip or zstd
(or passes a plain tar), hashing the result for the diff ID, as the tar reader
asks for more.

Gzip is inflated by ISA-L (`isal`), two to three times zlib's speed, and like
zlib it lets go of the GIL while it works, so layers inflate on every core.
The tar reader takes headers through `read`; file contents leave through
`copy_to`, straight from the inflated buffer to the file, without a copy in
Python. Buffers are bounded: the thread holds one received chunk (`BODY_BATCH`, gathered
from the client's reads) at a time and one inflate step yields at most `MAX_DECOMPRESS_STEP`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from .errors import DataLoss, UnpackAborted

READ_SIZE = 1 << 20
MAX_DECOMPRESS_STEP = 1 << 20
# A compressed chunk goes to the inflater in slices of this size: what one inflate step leaves
# unconsumed (a step's output is capped) comes back as a copy, so the slice bounds that copy;
# and the inflater's outputs stay small: slices of 256 KiB (outputs as large, for layers gzip
# cannot shrink) left the daemon's peak RSS some 15 MiB higher in scripts/bench-pull.
INFLATE_FEED = 64 << 10
# A layer body goes on to the hashing, writing and inflating in chunks of this size (BodySource).
# 1 MiB chunks were some 10% quicker still in scripts/bench-pull, but left the daemon's peak RSS
# during a pull about 7 MiB higher (allocator arenas of three unpack threads), over its bound.
BODY_BATCH = 256 << 10
GZIP_WBITS = 16 + 15  # a gzip header and trailer around a deflate stream of a 32 KiB window
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

Chunk = bytes | memoryview  # a piece of a compressed layer, valid until the next one is asked for
ChunkSource = Callable[[], Chunk | None]
_T = TypeVar("_T")


def file_source(path: Path, stop: threading.Event | None = None) -> ChunkSource:
    """A ChunkSource reading a local file (import and re-unpack from a stored blob).

    Setting `stop` ends the unpack at its next read (UnpackAborted): a cancelled pull
    must not go on unpacking a large stored blob in its thread long after the deadline.
    """
    handle = open(path, "rb")  # noqa: SIM115 - closed at EOF or on abort below

    def read() -> bytes | None:
        if stop is not None and stop.is_set():
            handle.close()
            raise UnpackAborted("pull cancelled")
        data = handle.read(READ_SIZE)
        if not data:
            handle.close()
            return None
        return data

    return read


PROGRESS_STEP = 1 << 20  # downloaded bytes between two progress reports to the event loop ...
# ... and seconds: each report wakes the loop, which takes the GIL from the unpack threads just
# as they come back from a socket read (a report per MiB cost a sixth of a fast pull's time).
PROGRESS_INTERVAL = 0.1


class StreamBroken(Exception):
    """The connection broke while the body was read (the layer is retried from its start)."""


class BodySource:
    """A ChunkSource reading a response body of a blocking HTTP client, in the unpack thread.

    The socket reads let go of the GIL, as do the hashing and inflating that follow in the
    same thread, so layers download and unpack on every core while the event loop is only
    told of progress once `PROGRESS_STEP` bytes arrived, at most once per `PROGRESS_INTERVAL`
    (`on_bytes`, called on the loop).
    `interrupt`, from the loop, ends the read at once: the next read (or the one waiting)
    raises UnpackAborted, so a cancelled pull never waits on a stalled connection.
    """

    def __init__(
        self, response: Any, on_bytes: Callable[[int], None], step: int = PROGRESS_STEP, batch: int = BODY_BATCH
    ) -> None:
        self._response = response
        # A body of ReadintoTransport's (blobtransport.py) fills the buffer itself; another
        # (through a proxy) is iterated and its pieces gathered into the buffer.
        self._readinto: Callable[[bytearray], int] | None = response.extensions.get("readinto")
        self._chunks = response.iter_raw() if self._readinto is None else iter(())
        self._buffer = bytearray(batch)
        self._carry = memoryview(b"")  # the part of the client's last read not yet in a chunk
        self._eof = False
        self._loop = asyncio.get_running_loop()
        self._on_bytes = on_bytes
        self._step = step
        self._unreported = 0
        self._reported_at = 0.0  # time.monotonic() of the last report
        self._stop = threading.Event()
        self.received = 0  # bytes read so far

    def interrupt(self) -> None:
        """Asks the reading thread to stop; a read blocked on the socket returns now."""
        self._stop.set()
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the raw socket, under any TLS
            except OSError:
                pass

    def stopped(self) -> bool:
        return self._stop.is_set()

    def _report(self) -> None:
        n, self._unreported = self._unreported, 0
        self._reported_at = time.monotonic()
        try:
            self._loop.call_soon_threadsafe(self._on_bytes, n)
        except RuntimeError:
            pass  # the loop is gone: nobody follows the progress any more

    def __call__(self) -> memoryview | None:
        """The next `batch` bytes (fewer only at the end of the body); None at its end.

        ReadintoTransport (blobtransport.py) reads the body straight into this source's buffer;
        httpx's own transport (used through a proxy) hands it over in socket reads of 64 KiB, which
        are gathered here. Either way a chunk holds `batch` bytes, so that the hashing, writing and
        inflating that follow make one call (and one hand-over of the GIL) per `batch` bytes rather
        than per 64 KiB. The chunk is a view of one buffer this source fills again on its next
        call: the stream reading it (CompressedStream, DecompressedStream) is done with a chunk
        before it asks for the next, and the buffer, allocated once, leaves no MiB-sized garbage
        in the allocator's arenas."""
        if self._readinto is not None:
            return self._read_into_buffer()
        buffer = self._buffer
        size = 0
        while size < len(buffer):
            if not self._carry:
                chunk = None if self._eof else self._read()
                if chunk is None:
                    self._eof = True
                    break
                self._carry = memoryview(chunk)
            n = min(len(self._carry), len(buffer) - size)
            buffer[size : size + n] = self._carry[:n]
            self._carry = self._carry[n:]
            size += n
        if not size:
            if self._unreported:
                self._report()
            return None
        return memoryview(buffer)[:size]

    def _read_into_buffer(self) -> memoryview | None:
        """The next `batch` bytes read by the transport straight into the buffer; None at the end."""
        readinto = self._readinto
        assert readinto is not None
        n = self._guarded(lambda: readinto(self._buffer))
        if not n:
            if self._unreported:
                self._report()
            return None
        self._count(n)
        return memoryview(self._buffer)[:n]

    def _count(self, n: int) -> None:
        self.received += n
        self._unreported += n
        if self._unreported >= self._step and time.monotonic() - self._reported_at >= PROGRESS_INTERVAL:
            self._report()

    def _read(self) -> bytes | None:
        """One non-empty read of the client's (None at the end of the body), counted."""

        def next_piece() -> bytes | None:
            chunk = next(self._chunks, None)
            while chunk is not None and not chunk:
                chunk = next(self._chunks, None)
            return chunk

        chunk = self._guarded(next_piece)
        if chunk is None:
            return None
        assert isinstance(chunk, bytes)
        self._count(len(chunk))
        return chunk

    def _guarded(self, read: Callable[[], _T]) -> _T:
        """`read()` of the body: UnpackAborted once `interrupt` was called (before, or during the
        read it ended), StreamBroken when the connection failed."""
        import httpx  # here, not at the top: archive imports leave httpx unloaded

        if self._stop.is_set():
            raise UnpackAborted("pull cancelled")
        try:
            result = read()
        except httpx.TransportError as exc:
            if self._stop.is_set():
                raise UnpackAborted("pull cancelled") from exc
            raise StreamBroken(repr(exc)) from exc
        if self._stop.is_set():
            raise UnpackAborted("pull cancelled")
        return result


def never_stopped() -> bool:
    return False


class CompressedStream:
    """Pulls chunks, passing each to `sink` (hash + blob file) before handing it on.

    `stopped` is asked before every inflate step, not only before each read: a few MB of
    a highly compressed layer inflate to GBs without another read, and a cancelled pull
    must not go on unpacking them in its thread.
    """

    def __init__(
        self,
        source: ChunkSource,
        sink: Callable[[Chunk], None],
        stopped: Callable[[], bool] = never_stopped,
    ) -> None:
        self._source = source
        self._sink = sink
        self.stopped = stopped
        self._pending = b""
        self.eof = False
        self.total = 0

    def peek(self, n: int) -> bytes:
        while len(self._pending) < n and not self.eof:
            chunk = self._next()
            if chunk is None:
                break
            self._pending += chunk
        return self._pending[:n]

    def _next(self) -> Chunk | None:
        chunk = self._source()
        if chunk is None:
            self.eof = True
            return None
        self._sink(chunk)
        self.total += len(chunk)
        return chunk

    def chunk(self) -> Chunk | None:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if self.eof:
            return None
        return self._next()


class _ChunkReader:
    """The compressed chunks as a file for zstandard's stream reader (which only calls `read`)."""

    def __init__(self, compressed: CompressedStream) -> None:
        self._in = compressed
        self._rest: Chunk = b""

    def read(self, n: int) -> bytes:
        if not self._rest:
            self._rest = self._in.chunk() or b""
        data, self._rest = self._rest[:n], self._rest[n:]
        return bytes(data)  # a copy: zstandard may hold it past the chunk's life


class DecompressedStream:
    """A readable stream of the uncompressed tar, hashing it for the diff ID as it goes."""

    def __init__(self, compressed: CompressedStream, where: str) -> None:
        self._in = compressed
        self._where = where
        import hashlib  # not at the top: it loads libcrypto, which an idle daemon does without

        self.diff_hash = hashlib.sha256()
        self.size = 0
        magic = compressed.peek(4)
        self.kind = "gzip" if magic.startswith(GZIP_MAGIC) else "zstd" if magic == ZSTD_MAGIC else "tar"
        self._z: Any = self._new_decoder()
        self._tail = b""  # input the inflater left unconsumed: fed again before `_rest`
        self._rest = memoryview(b"")  # the part of the last compressed chunk not yet fed
        self._buf = memoryview(b"")
        self._done = False
        self._pos = 0  # bytes of the tar handed out or skipped: tell() for the tar reader

    def _new_decoder(self) -> Any:
        # isal and zstandard load with the first layer, not with the daemon: an idle node
        # that pulls nothing does not carry them.
        import zstandard
        from isal import isal_zlib

        if self.kind == "gzip":
            return isal_zlib.decompressobj(GZIP_WBITS)
        if self.kind == "zstd":
            # A reader, not decompressobj: its read(n) bounds the output of one step, where a
            # few KB of zstd input can decompress to GBs in one decompressobj call.
            return zstandard.ZstdDecompressor().stream_reader(
                cast("IO[bytes]", _ChunkReader(self._in)), read_size=READ_SIZE, read_across_frames=True, closefd=False
            )
        return None

    def _fill(self) -> bool:
        """Produces more uncompressed bytes into self._buf; False at the end of the stream."""
        while True:
            if self._in.stopped():
                raise UnpackAborted("pull cancelled")
            out = self._inflate_step()
            if out is None:
                return False
            if out:
                self.diff_hash.update(out)
                self.size += len(out)
                self._buf = memoryview(out)
                return True

    def _inflate_step(self) -> Chunk | None:
        """At most MAX_DECOMPRESS_STEP more bytes of the tar (maybe none yet); None at its end."""
        if self._z is None:
            return self._in.chunk()
        if self.kind == "zstd":
            import zstandard

            try:
                out: bytes = self._z.read(MAX_DECOMPRESS_STEP)
            except zstandard.ZstdError as exc:
                raise DataLoss(f"{self._where}: corrupt zstd data: {exc}") from exc
            return out or None
        data: bytes | memoryview
        if self._tail:
            data, self._tail = self._tail, b""
        else:
            if not self._rest:
                got = self._in.chunk()
                if got is None:
                    if not self._z.eof and not self._empty_member:
                        raise DataLoss(f"{self._where}: truncated gzip stream")
                    return None
                self._rest = memoryview(got)
            data, self._rest = self._rest[:INFLATE_FEED], self._rest[INFLATE_FEED:]
        return self._inflate_gzip(data)

    _empty_member = False

    def _inflate_gzip(self, data: bytes | memoryview) -> bytes:
        from isal import isal_zlib

        # isal's stubs declare `error` as an exception instance; it is the class zlib.error would be.
        inflate_error = cast("type[Exception]", isal_zlib.error)
        try:
            if self._z.eof:
                rest = self._z.unused_data + bytes(data)
                if not rest.strip(b"\0"):
                    return b""  # zero padding after the last member
                self._z = self._new_decoder()
                data = rest
            out: bytes = self._z.decompress(data, MAX_DECOMPRESS_STEP)
            self._tail = self._z.unconsumed_tail
            if self._z.eof and self._z.unused_data:
                self._tail = self._z.unused_data + self._tail
                self._z = self._new_decoder()
            return out
        except inflate_error as exc:
            raise DataLoss(f"{self._where}: corrupt gzip data: {exc}") from exc

    def _view(self, n: int) -> memoryview:
        """Up to `n` next bytes as a view into the inflated buffer (empty at the end); no copy."""
        if not self._buf:
            if self._done or not self._fill():
                self._done = True
                return memoryview(b"")
        view = self._buf[:n] if n >= 0 else self._buf
        self._buf = self._buf[len(view) :]
        self._pos += len(view)
        return view

    def read(self, n: int = -1) -> bytes:
        """`n` bytes (all the rest for -1), fewer only at the end of the stream, as a file's
        read: tar headers, and members read through tarfile."""
        first = self._view(n)
        if n >= 0 and len(first) == n:
            return bytes(first)
        parts = [bytes(first)]
        got = len(first)
        while n < 0 or got < n:
            view = self._view(n - got if n >= 0 else -1)
            if not view:
                break
            parts.append(bytes(view))
            got += len(view)
        return b"".join(parts)

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        """Forward only, by skipping: what the tar reader asks for between members (padding)."""
        if whence == os.SEEK_CUR:
            pos += self._pos
        elif whence != os.SEEK_SET:
            raise OSError(f"{self._where}: the layer stream cannot seek from its end")
        if pos < self._pos:
            raise OSError(f"{self._where}: the layer stream cannot seek back ({pos} < {self._pos})")
        while pos > self._pos and self._view(pos - self._pos):
            pass
        return self._pos

    def copy_to(self, fd: int, n: int) -> int:
        """Writes the next `n` bytes to `fd` straight from the inflated buffer; returns how
        many there were (fewer only at the end of the stream)."""
        left = n
        while left > 0:
            view = self._view(min(left, READ_SIZE))
            if not view:
                break
            left -= len(view)
            while view:
                view = view[os.write(fd, view) :]
        return n - left

    def drain(self) -> None:
        while self._view(READ_SIZE):
            pass
