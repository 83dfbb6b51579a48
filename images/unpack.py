"""Layer unpack: a (possibly compressed) tar stream -> one layer directory for overlayfs.

The unpack runs in a worker thread and reads the download as it arrives
(`ChunkFeed`), so a layer is written to disk while it downloads: the
compressed stream is hashed (and kept as a blob), decompressed, hashed again
(the diff ID) and extracted in one pass. Nothing lands under the layer's
final name until both digests matched: extraction goes to a temp directory
that is renamed into place at the end.

Safety: entries with absolute names or `..`, or whose parent is a symlink
(a write through a link could land anywhere), are refused. OCI whiteouts
become overlayfs ones: `.wh.NAME` -> a 0/0 character device NAME, and
`.wh..wh..opq` -> `trusted.overlay.opaque=y` on its directory.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import hashlib
import os
import queue
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from .content import BlobWriter
from .errors import DataLoss, ImageError, InvalidArgument

READ_SIZE = 1 << 20
MAX_DECOMPRESS_STEP = 4 << 20
ZSTD_INPUT_STEP = 256 << 10
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class UnpackAborted(ImageError):
    """The pull was cancelled while the layer was being unpacked."""


class LayerEscape(InvalidArgument):
    """A layer entry would be written outside the layer directory."""


_EOF = object()
_ABORT = object()


class ChunkFeed:
    """Hands downloaded chunks from the event loop to the unpack thread, with back-pressure.

    The loop side awaits a credit before each `put`, so at most `depth`
    chunks wait in memory; the thread gives credits back as it consumes.
    """

    def __init__(self, depth: int = 16) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._depth = depth
        self._credits = asyncio.Semaphore(depth)
        self._consumer_gone = False

    async def put(self, chunk: bytes) -> None:
        if self._consumer_gone:
            return
        await self._credits.acquire()
        self._queue.put(chunk)

    def consumer_done(self) -> None:
        """Called by the thread when it stops reading, so a waiting `put` never hangs."""
        try:
            self._loop.call_soon_threadsafe(self._open_gates)
        except RuntimeError:
            pass

    def _open_gates(self) -> None:
        self._consumer_gone = True
        for _ in range(self._depth + 1):
            self._credits.release()

    def finish(self) -> None:
        self._queue.put(_EOF)

    def abort(self) -> None:
        self._queue.put(_ABORT)

    def _release(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._credits.release)
        except RuntimeError:
            pass  # the loop is gone: nobody waits for credits any more

    def __call__(self) -> bytes | None:
        item = self._queue.get()
        if item is _ABORT:
            raise UnpackAborted("pull cancelled")
        if item is _EOF:
            self._queue.put(_EOF)
            return None
        self._release()
        assert isinstance(item, bytes)
        return item


def file_source(path: Path) -> Callable[[], bytes | None]:
    """A ChunkSource reading a local file (import and re-unpack from a stored blob)."""
    handle = open(path, "rb")  # noqa: SIM115 - closed at EOF below

    def read() -> bytes | None:
        data = handle.read(READ_SIZE)
        if not data:
            handle.close()
            return None
        return data

    return read


class _Compressed:
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


class _Decompressed:
    """A readable stream of the uncompressed tar, hashing it for the diff ID as it goes."""

    def __init__(self, compressed: _Compressed, where: str) -> None:
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

    def _new_decoder(self) -> Any:
        if self.kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
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
        except (zlib.error, zstandard.ZstdError) as exc:
            raise DataLoss(f"{self._where}: corrupt {self.kind} data: {exc}") from exc

    def read(self, n: int = -1) -> bytes:
        if not self._buf:
            if self._done or not self._fill():
                self._done = True
                return b""
        if n < 0 or n >= len(self._buf):
            out = bytes(self._buf)
            self._buf = memoryview(b"")
            return out
        out = bytes(self._buf[:n])
        self._buf = self._buf[n:]
        return out

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass


@dataclass(frozen=True, slots=True)
class UnpackResult:
    digest: str  # of the compressed stream
    diff_id: str  # of the uncompressed tar
    compressed_size: int
    size: int  # bytes of file data written
    inodes: int
    compression: str
    deferred_links: tuple[tuple[str, str], ...] = ()  # (link, target) whose target is in a lower layer


class _Extractor:
    """Writes tar members below `root`, refusing escapes and converting whiteouts."""

    def __init__(self, root: Path, where: str) -> None:
        self.root = root
        self.where = where
        self.dirs: set[str] = {""}
        self.dir_times: list[tuple[str, float]] = []
        self.is_root = os.geteuid() == 0
        self.size = 0
        self.inodes = 0
        self.deferred: list[tuple[str, str]] = []

    def _rel(self, name: str, what: str = "entry") -> str:
        if name.startswith("/"):
            raise LayerEscape(f"{self.where}: {what} {name!r} has an absolute path; refusing the layer")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise LayerEscape(f"{self.where}: {what} {name!r} contains '..'; refusing the layer")
        return "/".join(parts)

    def _ensure_parent(self, rel: str) -> None:
        parent = rel.rpartition("/")[0]
        if parent in self.dirs:
            return
        current = ""
        for comp in parent.split("/"):
            current = f"{current}/{comp}" if current else comp
            if current in self.dirs:
                continue
            path = self.root / current
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                self.inodes += 1
                self.dirs.add(current)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise LayerEscape(
                    f"{self.where}: entry below {current!r} would be written through a symlink; refusing the layer"
                )
            if not stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"{self.where}: {current!r} is not a directory but has entries below it")
            self.dirs.add(current)

    def _clear(self, rel: str, keep_dir: bool) -> None:
        path = self.root / rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
            self.dirs = {d for d in self.dirs if d != rel and not d.startswith(rel + "/")}
        else:
            os.unlink(path)

    def _apply_metadata(self, path: Path, member: tarfile.TarInfo) -> None:
        is_link = member.issym()
        if self.is_root:
            os.lchown(path, member.uid, member.gid)
        if not is_link:
            os.chmod(path, stat.S_IMODE(member.mode))
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                name = key[len("SCHILY.xattr.") :]
                try:
                    os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                        raise
        if not member.isdir():
            os.utime(path, ns=(int(member.mtime * 1e9),) * 2, follow_symlinks=False)

    def _whiteout(self, rel: str, member: tarfile.TarInfo) -> None:
        parent, _, base = rel.rpartition("/")
        if base == OPAQUE_MARKER:
            os.setxattr(self.root / parent if parent else self.root, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk, ...) has no overlay meaning
        target_rel = f"{parent}/{base[len(WHITEOUT_PREFIX) :]}" if parent else base[len(WHITEOUT_PREFIX) :]
        if not target_rel.rpartition("/")[2]:
            raise InvalidArgument(f"{self.where}: whiteout {member.name!r} names nothing")
        self._clear(target_rel, keep_dir=False)
        path = self.root / target_rel
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        if self.is_root:
            os.lchown(path, member.uid, member.gid)
        self.inodes += 1

    def add(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = self._rel(member.name)
        if not rel:
            if member.isdir():
                self._apply_metadata(self.root, member)
                self.dir_times.append(("", member.mtime))
            return
        self._ensure_parent(rel)
        if rel.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
            self._whiteout(rel, member)
            return
        path = self.root / rel
        self._clear(rel, keep_dir=member.isdir())
        if member.isdir():
            if not path.exists():
                os.mkdir(path, 0o700)
                self.inodes += 1
            self.dirs.add(rel)
            self.dir_times.append((rel, member.mtime))
        elif member.isreg():
            self._write_file(tf, member, path)
        elif member.issym():
            os.symlink(member.linkname, path)
            self.inodes += 1
        elif member.islnk():
            source_rel = self._rel(member.linkname, "hardlink target")
            source = self.root / source_rel
            self._ensure_parent(source_rel)
            if not os.path.lexists(source):
                # The target is in a lower layer: overlayfs would copy it up, so
                # resolve_deferred_links does the same once the lower layers exist.
                self.deferred.append((rel, source_rel))
                return
            os.link(source, path, follow_symlinks=False)
            return  # the link shares the target's inode and metadata
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            self.inodes += 1
        elif member.isfifo():
            os.mkfifo(path, 0o600)
            self.inodes += 1
        else:
            raise InvalidArgument(f"{self.where}: entry {member.name!r} has unsupported tar type {member.type!r}")
        self._apply_metadata(path, member)

    def _write_file(self, tf: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            source = tf.extractfile(member)
            assert source is not None
            remaining = member.size
            while remaining > 0:
                data = source.read(min(READ_SIZE, remaining))
                if not data:
                    raise DataLoss(f"{self.where}: tar ends inside {member.name!r} (truncated layer)")
                remaining -= len(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        self.size += member.size
        self.inodes += 1

    def finish(self) -> None:
        """Directory times last: creating their children changed them."""
        for rel, mtime in sorted(self.dir_times, key=lambda item: item[0].count("/"), reverse=True):
            ns = int(mtime * 1e9)
            os.utime(self.root / rel if rel else self.root, ns=(ns, ns), follow_symlinks=False)


def syncfs(path: Path) -> None:
    """Flushes the filesystem holding `path`: one call instead of an fsync per extracted file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def unpack_layer(
    source: Callable[[], bytes | None],
    dest: Path,
    *,
    where: str,
    blob: BlobWriter | None = None,
    expected_digest: str | None = None,
    expected_diff_id: str | None = None,
) -> UnpackResult:
    """Extracts the stream from `source` into the existing, empty directory `dest`.

    `blob`, when given, receives (and hashes) every compressed chunk. Raises DataLoss on a
    digest or diff ID mismatch, LayerEscape on an escaping entry. The caller
    owns `dest` and removes it on failure.
    """
    blob_hash = hashlib.sha256()
    compressed = _Compressed(source, blob.write if blob is not None else blob_hash.update)
    stream = _Decompressed(compressed, where)
    extractor = _Extractor(dest, where)
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=READ_SIZE) as tf:  # type: ignore[call-overload]
            for member in tf:
                extractor.add(tf, member)
    except tarfile.ReadError as exc:
        raise DataLoss(f"{where}: not a valid tar stream ({exc}); the layer is truncated or corrupt") from exc
    except tarfile.TarError as exc:
        raise DataLoss(f"{where}: bad tar stream: {exc}") from exc
    stream.drain()
    while compressed.chunk() is not None:
        pass
    digest = blob.digest_so_far() if blob is not None else "sha256:" + blob_hash.hexdigest()
    diff_id = "sha256:" + stream.diff_hash.hexdigest()
    if expected_digest is not None and digest != expected_digest:
        raise DataLoss(f"{where}: blob digest mismatch: expected {expected_digest}, got {digest}")
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise DataLoss(f"{where}: uncompressed content has diff ID {diff_id}, the image config says {expected_diff_id}")
    extractor.finish()
    return UnpackResult(
        digest=digest,
        diff_id=diff_id,
        compressed_size=compressed.total,
        size=extractor.size,
        inodes=extractor.inodes,
        compression=stream.kind,
        deferred_links=tuple(extractor.deferred),
    )


def _lookup_in_layer(layer: Path, rel: str) -> Path | None:
    """`layer/rel` if present and reached without symlinks; None if absent or whited out."""
    current = layer
    parts = rel.split("/")
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None  # whiteout
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return None
    return current


def resolve_deferred_links(dest: Path, links: tuple[tuple[str, str], ...], lowers: list[Path], where: str) -> None:
    """Creates hardlinks whose target lives in a lower layer (`lowers`, topmost first) by copying
    the target up into this layer first, as overlayfs copy-up would."""
    for link_rel, target_rel in links:
        copied = dest / target_rel
        if not os.path.lexists(copied):
            found = next((p for layer in lowers if (p := _lookup_in_layer(layer, target_rel)) is not None), None)
            if found is None:
                raise InvalidArgument(f"{where}: hardlink {link_rel!r} points to missing {target_rel!r}")
            extractor = _Extractor(dest, where)
            extractor._ensure_parent(target_rel)
            st = os.lstat(found)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(found), copied)
            else:
                shutil.copy2(found, copied, follow_symlinks=False)
            if os.geteuid() == 0:
                os.lchown(copied, st.st_uid, st.st_gid)
                if not stat.S_ISLNK(st.st_mode):
                    os.chmod(copied, stat.S_IMODE(st.st_mode))
            for name in os.listxattr(found, follow_symlinks=False):
                os.setxattr(copied, name, os.getxattr(found, name, follow_symlinks=False), follow_symlinks=False)
        link = dest / link_rel
        if os.path.lexists(link):
            os.unlink(link)
        os.link(copied, link, follow_symlinks=False)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain IDs: each names a layer together with everything below it."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out
