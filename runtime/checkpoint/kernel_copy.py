"""Tar members' bytes copied file to file by the kernel, not through Python.

A checkpoint's archive is mostly CRIU's page images: a container holding 100 MiB
writes 100 MiB into the tar and reads 100 MiB back out of it. tarfile moves member
bytes through Python buffers (a read into user space, a write back out), which on
a slow node costs more than the disk. `KernelCopyTar` keeps tarfile for everything
else (headers, PAX records, padding, every check the caller makes before
extracting a member) and moves only a regular member's data with
copy_file_range(2) (sendfile(2) where that is refused, e.g. across filesystems on
some kernels), straight between the file descriptors.

It does so only when both ends are plain files: an archive opened through a
decompressor, or a member given as an in-memory buffer, takes tarfile's own path,
so a gzip or zstd archive is read exactly as before.
"""

from __future__ import annotations

import errno
import io
import os
import tarfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import StrOrBytesPath, SupportsRead

# Errors by which copy_file_range says "not between these two files": sendfile then.
_NOT_HERE = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF})
# One call's most: the kernel caps a copy near 2 GiB anyway, and smaller calls keep a size_t-safe count.
_MAX_CALL = 1 << 30
_PLAIN_FILES = (io.FileIO, io.BufferedReader, io.BufferedWriter, io.BufferedRandom)


def copy_range(src: int, src_offset: int, dst: int, count: int) -> int:
    """Copies up to `count` bytes from `src` at `src_offset` to `dst` at its file position
    (which advances); returns how many were copied, fewer only at the end of `src`."""
    done = 0
    use_sendfile = False
    while done < count:
        n = min(count - done, _MAX_CALL)
        if not use_sendfile:
            try:
                copied = os.copy_file_range(src, dst, n, src_offset + done)
            except OSError as exc:
                if exc.errno not in _NOT_HERE:
                    raise
                use_sendfile = True
                continue
        else:
            copied = os.sendfile(dst, src, src_offset + done, n)
        if copied == 0:
            break  # the end of `src`
        done += copied
    return done


def _fd(stream: Any) -> int | None:
    """The descriptor behind `stream` if it is a plain file (not a decompressor or a buffer)."""
    if not isinstance(stream, _PLAIN_FILES):
        return None
    try:
        return int(stream.fileno())
    except (OSError, ValueError):
        return None


class KernelCopyTar(tarfile.TarFile):
    """A TarFile whose regular members' data moves between plain files inside the kernel."""

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: SupportsRead[bytes] | None = None) -> None:
        src, dst = _fd(fileobj), _fd(self.fileobj)
        if src is None or dst is None or not tarinfo.isreg() or tarinfo.size == 0:
            super().addfile(tarinfo, fileobj)
            return
        tar: Any = self  # tarfile's undocumented parts (_check, members), as its own addfile uses them
        tar._check("awx")
        out: Any = self.fileobj
        header = tarinfo.tobuf(self.format or tarfile.PAX_FORMAT, self.encoding, self.errors)
        out.write(header)
        self.offset += len(header)
        out.flush()  # the header on disk before the data goes in behind it
        os.lseek(dst, self.offset, os.SEEK_SET)
        if copy_range(src, _position(fileobj), dst, tarinfo.size) != tarinfo.size:
            raise OSError(f"{tarinfo.name}: the file shrank while it was archived")
        out.seek(self.offset + tarinfo.size)
        blocks, remainder = divmod(tarinfo.size, tarfile.BLOCKSIZE)
        if remainder:
            out.write(tarfile.NUL * (tarfile.BLOCKSIZE - remainder))
            blocks += 1
        self.offset += blocks * tarfile.BLOCKSIZE
        tar.members.append(tarinfo)

    def makefile(self, tarinfo: tarfile.TarInfo, targetpath: StrOrBytesPath) -> None:
        src = _fd(self.fileobj)
        if src is None or tarinfo.sparse is not None:
            super().makefile(tarinfo, targetpath)
            return
        with open(targetpath, "wb") as target:
            if copy_range(src, tarinfo.offset_data, target.fileno(), tarinfo.size) != tarinfo.size:
                raise tarfile.ReadError("unexpected end of data")


def _position(stream: Any) -> int:
    return int(stream.tell())
