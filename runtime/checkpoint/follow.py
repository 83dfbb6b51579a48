"""CRIU's page image copied into the archive while CRIU is still writing it.

A checkpoint's archive is mostly one file: the memory CRIU dumps into `pages-1.img`
(the container's first process). Copied after the dump, its bytes cost as much again
as the dump itself on a slow node. CRIU writes that file front to back and never goes
back in it, so `PageFollower` copies what it has written so far, again and again, while
`runc checkpoint` runs, into the archive's partial file behind a room left for its tar
header; once runc is done only the last part is left to copy, and `archive.write_archive`
fills the room with the member's header (`header_of_length`, padded out with a PAX
comment record, which readers ignore) and writes the other members after it.

Only the first page image to appear is followed: that is the first process's, which
is the container's memory in the common one-process container. Other processes' page
images go into the archive after the dump, as every other file does.
"""

from __future__ import annotations

import os
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from crishim.runtime.checkpoint.kernel_copy import copy_range

# Where the followed file's data starts in the archive: its header is written over the room before.
HEADER_ROOM = 4096
PAGES_PREFIX = "pages-"
PAGES_SUFFIX = ".img"
POLL_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class Followed:
    """The page image copied into the partial archive at HEADER_ROOM: its path and its size."""

    source: Path
    size: int


class PageFollower:
    """A thread that copies the first page image CRIU writes in `images` into `partial`.

    The partial file is created (exclusively) once a page image appears. `finish`, once
    CRIU has exited, copies what is left and returns what was copied (None, and no partial
    file, if CRIU wrote no page image); `stop` ends the thread without finishing. Either
    way a partial file stays, for write_archive to complete or the caller to remove.
    """

    def __init__(self, images: Path, partial: Path, abort: threading.Event) -> None:
        self.images = images
        self.partial = partial
        self._abort = abort
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crishim-follow", daemon=True)
        self._source: Path | None = None
        self._src = self._dst = -1
        self._copied = 0
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> Followed | None:
        """Blocking: CRIU has exited; the whole page image is in the partial file when this returns."""
        try:
            self._join()
            if self._error is not None:
                raise self._error
            if self._source is None:
                return None
            size = os.fstat(self._src).st_size
            self._copy_up_to(size)
            if self._copied != size:
                raise OSError(f"{self._source}: the page image shrank while it was archived")
            return Followed(self._source, size)
        finally:
            self._close()

    def stop(self) -> None:
        """Blocking: ends the thread and closes its files (after a failed dump); idempotent."""
        self._join()
        self._close()

    def _join(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _close(self) -> None:
        for fd in (self._src, self._dst):
            if fd >= 0:
                os.close(fd)
        self._src = self._dst = -1

    def _run(self) -> None:
        try:
            while self._source is None and not self._stopping():
                self._source = _first_page_image(self.images)
                if self._source is None:
                    self._done.wait(POLL_SECONDS)
            if self._source is not None:
                self._src = os.open(self._source, os.O_RDONLY | os.O_CLOEXEC)
                self._dst = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            while self._source is not None and not self._stopping():
                if not self._copy_up_to(os.fstat(self._src).st_size):
                    self._done.wait(POLL_SECONDS)
        except BaseException as exc:  # noqa: BLE001 - handed to finish(), which raises it in the caller
            self._error = exc

    def _stopping(self) -> bool:
        return self._done.is_set() or self._abort.is_set()

    def _copy_up_to(self, size: int) -> int:
        """Copies the source's bytes from those copied already up to `size`; returns how many."""
        if size <= self._copied:
            return 0
        os.lseek(self._dst, HEADER_ROOM + self._copied, os.SEEK_SET)
        got = copy_range(self._src, self._copied, self._dst, size - self._copied)
        self._copied += got
        return got


def _first_page_image(images: Path) -> Path | None:
    try:
        names = [n for n in os.listdir(images) if n.startswith(PAGES_PREFIX) and n.endswith(PAGES_SUFFIX)]
    except FileNotFoundError:
        return None
    return images / min(names, key=_page_image_number) if names else None


def _page_image_number(name: str) -> int:
    digits = name[len(PAGES_PREFIX) : -len(PAGES_SUFFIX)]
    return int(digits) if digits.isdigit() else 1 << 62


def header_of_length(info: tarfile.TarInfo, length: int, encoding: str, errors: str) -> bytes:
    """`info`'s header blocks in PAX format, exactly `length` bytes: padded with a `comment` record.

    POSIX has readers ignore `comment`; GNU tar, Python's tarfile and Go's archive/tar do.
    Each step grows the extended header's records by 256 bytes, less than a block (512),
    so the first step at or past `length` lands on it exactly.
    """
    header = info.tobuf(tarfile.PAX_FORMAT, encoding, errors)
    own = dict(info.pax_headers)
    padding = 0
    while len(header) < length:
        info.pax_headers = {**own, "comment": "0" * padding}
        header = info.tobuf(tarfile.PAX_FORMAT, encoding, errors)
        padding += 256
    if len(header) != length:
        raise ValueError(f"{info.name}: its header takes {len(header)} bytes, more than the {length} left for it")
    return header
