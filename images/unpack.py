"""Layer unpack: a (possibly compressed) tar stream -> one layer directory for overlayfs.

The unpack runs in a worker thread and reads the download as it arrives
(layerstream.py), so a layer is written to disk while it downloads: the
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

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .content import BlobWriter
from .errors import DataLoss, InvalidArgument, LayerEscape
from .layerstream import READ_SIZE, ChunkSource, CompressedStream, DecompressedStream, never_stopped

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


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
            stream = tf.fileobj
            if isinstance(stream, DecompressedStream) and not member.issparse():
                # The common case: the contents go from the inflated buffer to the file directly.
                stream.seek(member.offset_data)
                if stream.copy_to(fd, member.size) != member.size:
                    raise DataLoss(f"{self.where}: tar ends inside {member.name!r} (truncated layer)")
            else:
                self._copy_member(tf, member, fd)
        finally:
            os.close(fd)
        self.size += member.size
        self.inodes += 1

    def _copy_member(self, tf: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        """Through tarfile's reader: sparse members, whose holes it fills in."""
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
    source: ChunkSource,
    dest: Path,
    *,
    where: str,
    blob: BlobWriter | None = None,
    expected_digest: str | None = None,
    expected_diff_id: str | None = None,
    stopped: Callable[[], bool] = never_stopped,
) -> UnpackResult:
    """Extracts the stream from `source` into the existing, empty directory `dest`.

    `stopped` returning True ends the unpack with UnpackAborted at the next inflate step.

    `blob`, when given, receives (and hashes) every compressed chunk. Raises DataLoss on a
    digest or diff ID mismatch, LayerEscape on an escaping entry. The caller
    owns `dest` and removes it on failure.
    """
    import hashlib  # not at the top: it loads libcrypto, which an idle daemon does without

    blob_hash = hashlib.sha256()
    compressed = CompressedStream(source, blob.write if blob is not None else blob_hash.update, stopped)
    stream = DecompressedStream(compressed, where)
    extractor = _Extractor(dest, where)
    try:
        # "r:" rather than the stream mode "r|": tarfile then reads headers from `stream` itself
        # (which seeks forward only, as the reader asks), so regular files can be copied out of
        # the inflated buffer without tarfile's buffering and its copies.
        with tarfile.open(fileobj=stream, mode="r:") as tf:  # type: ignore[call-overload]
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
    import hashlib

    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out
