"""Content-addressed blob store: `<root>/blobs/sha256/<hex>`.

A blob reaches its final name only after its sha256 matched while it was
written, the data was fsynced and the temp file renamed: a crash or a bad
download leaves at most a file under `<root>/tmp/`, which `sweep()` clears.
Writers are plain (blocking) objects: callers use them from worker threads.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import DataLoss, InvalidArgument, NotFound
from .reference import validate_digest


@functools.cache
def _sync_file_range() -> Any:
    """libc's sync_file_range, loaded with the first blob written: ctypes stays out of an idle daemon."""
    import ctypes

    call = ctypes.CDLL(None, use_errno=True).sync_file_range
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return call


_SYNC_FILE_RANGE_WRITE = 2
# A blob's written bytes are handed to the disk every this many bytes while it downloads.
WRITEBACK_STEP = 8 << 20


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Asks the kernel to start writing `length` bytes at `offset` to the disk, without waiting
    (sync_file_range(2), SYNC_FILE_RANGE_WRITE). Only a head start for the fsync of `commit`,
    which still makes the blob durable: a file system that refuses it changes nothing."""
    _sync_file_range()(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    """Makes a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """Writes one blob to a temp file, hashing as it goes; `commit()` verifies and renames."""

    def __init__(self, store: ContentStore, digest: str, expected_size: int = -1) -> None:
        self.store = store
        self.digest = digest
        self.expected_size = expected_size
        self.size = 0
        import hashlib  # not at the top: it loads libcrypto, which an idle daemon does without

        self._written_back = 0  # bytes handed to start_writeback so far
        self._hash = hashlib.sha256()
        fd, name = tempfile.mkstemp(prefix="blob-", dir=store.tmp)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._temp = Path(name)
        self._done = False

    def write(self, chunk: bytes | memoryview) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        view = memoryview(chunk)
        while view:
            written = self._file.write(view)
            view = view[written or 0 :]
        if self.size - self._written_back >= WRITEBACK_STEP:
            # The disk writes the blob while it downloads, so the fsync in `commit` (after the
            # last byte, before the layer counts as pulled) waits for the last few MB only.
            start_writeback(self._file.fileno(), self._written_back, self.size - self._written_back)
            self._written_back = self.size

    def digest_so_far(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def verify(self) -> None:
        """Raises DataLoss when what was written is not the expected blob."""
        actual = "sha256:" + self._hash.hexdigest()
        if self.expected_size >= 0 and self.size != self.expected_size:
            raise DataLoss(
                f"blob {self.digest}: got {self.size} bytes, the manifest says {self.expected_size} "
                "(truncated or corrupt download)"
            )
        if actual != self.digest:
            raise DataLoss(f"blob digest mismatch: expected {self.digest}, got {actual} ({self.size} bytes)")

    def commit(self) -> Path:
        self.verify()
        final = self.store.path(self.digest)
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp, final)
        fsync_dir(final.parent)
        self._done = True
        return final

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._file.close()
        self._temp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        validate_digest(digest)
        return self.blobs / digest.split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is not in the store") from exc

    def writer(self, digest: str, expected_size: int = -1) -> BlobWriter:
        validate_digest(digest)
        return BlobWriter(self, digest, expected_size)

    def write_bytes(self, digest: str, data: bytes) -> Path:
        """Stores a small blob (config, manifest) after verifying it."""
        with self.writer(digest, len(data)) as writer:
            writer.write(data)
            return writer.commit()

    def read_bytes(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is not in the store") from exc

    def delete(self, digest: str) -> None:
        try:
            self.path(digest).unlink(missing_ok=True)
        except InvalidArgument:
            return

    def digests(self) -> set[str]:
        return {"sha256:" + p.name for p in self.blobs.iterdir()}

    def sweep(self) -> None:
        """Removes temp files a crash left behind; only safe before any writer runs."""
        for entry in self.tmp.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
