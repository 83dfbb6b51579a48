"""A layer's byte stream on its way to the extractor, in the unpack thread.

Chunks come from the download as it arrives (`ChunkFeed`, with back-pressure on
the event loop) or from a file (`file_source`); `CompressedStream` hands each to
the blob writer (which hashes it), and `DecompressedStream` inflates gzip or zstd
(or passes a plain tar), hashing the result for the diff ID, as the tar reader
asks for more.

Gzip is inflated by ISA-L (`isal`), two to three times zlib's speed, and like
zlib it lets go of the GIL while it works, so layers inflate on every core.
The tar reader takes headers through `read`; file contents leave through
`copy_to`, straight from the inflated buffer to the file, without a copy in
Python. Buffers are bounded: the download queue holds at most `FEED_LIMIT`
bytes per layer and one inflate step yields at most `MAX_DECOMPRESS_STEP`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import zstandard
from isal import isal_zlib

from .errors import DataLoss, UnpackAborted

READ_SIZE = 1 << 20
MAX_DECOMPRESS_STEP = 1 << 20
FEED_LIMIT = 4 << 20  # downloaded bytes handed to a layer's unpack thread and not yet consumed
FEED_RELEASE_STEP = 1 << 20
GZIP_WBITS = 16 + 15  # a gzip header and trailer around a deflate stream of a 32 KiB window
ZSTD_INPUT_STEP = 256 << 10
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# isal's stubs declare `error` as an exception instance; it is the class zlib.error would be.
_INFLATE_ERROR = cast("type[Exception]", isal_zlib.error)

_EOF = object()
_ABORT = object()


class ChunkFeed:
    """Hands downloaded chunks from the event loop to the unpack thread, with back-pressure.

    Chunks go as the connection delivers them (no re-chunking copy). The loop side
    waits in `put` while `limit` bytes are handed over and not yet consumed; the
    thread reports what it consumed once per `release_step` bytes, so the loop is
    woken about once a MiB rather than once a chunk.
    """

    def __init__(self, limit: int = FEED_LIMIT, release_step: int = FEED_RELEASE_STEP) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._limit = limit
        self._step = min(release_step, limit // 2)  # below the limit: the thread always reports back
        self._in_flight = 0  # loop side: bytes put and not yet reported consumed
        self._room = asyncio.Event()
        self._room.set()
        self._consumed = 0  # thread side: bytes consumed and not yet reported
        self._consumer_gone = False

    async def put(self, chunk: bytes) -> None:
        while self._in_flight >= self._limit and not self._consumer_gone:
            self._room.clear()
            await self._room.wait()
        if self._consumer_gone:
            return
        self._in_flight += len(chunk)
        self._queue.put(chunk)

    def consumer_done(self) -> None:
        """Called by the thread when it stops reading, so a waiting `put` never hangs."""
        try:
            self._loop.call_soon_threadsafe(self._open_gates)
        except RuntimeError:
            pass

    def _open_gates(self) -> None:
        self._consumer_gone = True
        self._room.set()

    def _consumed_back(self, n: int) -> None:
        self._in_flight -= n
        if self._in_flight < self._limit:
            self._room.set()

    def finish(self) -> None:
        self._queue.put(_EOF)

    def abort(self) -> None:
        self._queue.put(_ABORT)

    def _release(self, n: int) -> None:
        self._consumed += n
        if self._consumed < self._step:
            return
        n, self._consumed = self._consumed, 0
        try:
            self._loop.call_soon_threadsafe(self._consumed_back, n)
        except RuntimeError:
            pass  # the loop is gone: nobody waits for room any more

    def __call__(self) -> bytes | None:
        item = self._queue.get()
        if item is _ABORT:
            raise UnpackAborted("pull cancelled")
        if item is _EOF:
            self._queue.put(_EOF)
            return None
        assert isinstance(item, bytes)
        self._release(len(item))
        return item


def file_source(path: Path, stop: threading.Event | None = None) -> Callable[[], bytes | None]:
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


class CompressedStream:
    """Pulls chunks, passing each to `sink` (hash + blob file) before handing it on."""

    def __init__(self, source: Callable[[], bytes | None], sink: Callable[[bytes], None]) -> None:
        self._source = source
        self._sink = sink
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

    def _next(self) -> bytes | None:
        chunk = self._source()
        if chunk is None:
            self.eof = True
            return None
        self._sink(chunk)
        self.total += len(chunk)
        return chunk

    def chunk(self) -> bytes | None:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if self.eof:
            return None
        return self._next()


class DecompressedStream:
    """A readable stream of the uncompressed tar, hashing it for the diff ID as it goes."""

    def __init__(self, compressed: CompressedStream, where: str) -> None:
        self._in = compressed
        self._where = where
        self.diff_hash = hashlib.sha256()
        self.size = 0
        magic = compressed.peek(4)
        self.kind = "gzip" if magic.startswith(GZIP_MAGIC) else "zstd" if magic == ZSTD_MAGIC else "tar"
        self._z: Any = self._new_decoder()
        self._tail = b""
        self._buf = memoryview(b"")
        self._done = False
        self._pos = 0  # bytes of the tar handed out or skipped: tell() for the tar reader

    def _new_decoder(self) -> Any:
        if self.kind == "gzip":
            return isal_zlib.decompressobj(GZIP_WBITS)
        if self.kind == "zstd":
            return zstandard.ZstdDecompressor().decompressobj()
        return None

    def _fill(self) -> bool:
        """Produces more uncompressed bytes into self._buf; False at the end of the stream."""
        while True:
            if self._z is None:
                data = self._in.chunk()
                if data is None:
                    return False
                out = data
            else:
                if self._tail:
                    data, self._tail = self._tail, b""
                else:
                    got = self._in.chunk()
                    if got is None:
                        if self.kind == "gzip" and not self._z.eof and not self._empty_member:
                            raise DataLoss(f"{self._where}: truncated gzip stream")
                        if self.kind == "zstd" and not self._z.eof and not self._empty_member:
                            raise DataLoss(f"{self._where}: truncated zstd stream")
                        return False
                    data = got
                out = self._decode(data)
            if out:
                self.diff_hash.update(out)
                self.size += len(out)
                self._buf = memoryview(out)
                return True

    _empty_member = False

    def _decode(self, data: bytes) -> bytes:
        try:
            if self.kind == "gzip":
                if self._z.eof:
                    rest = self._z.unused_data + data
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
            if self._z.eof:
                self._z = self._new_decoder()
            step, self._tail = data[:ZSTD_INPUT_STEP], data[ZSTD_INPUT_STEP:]
            out = self._z.decompress(step)
            if self._z.eof and self._z.unused_data:
                self._tail = self._z.unused_data + self._tail
                self._z = self._new_decoder()
            return out
        except (_INFLATE_ERROR, zstandard.ZstdError) as exc:
            raise DataLoss(f"{self._where}: corrupt {self.kind} data: {exc}") from exc

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
