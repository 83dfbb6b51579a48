"""The checkpoint archive: one tar in the layout CRI-O and Podman write (read back compressed too).

checkpointctl and the other runtimes read these members, so their names and
formats are an interface, kept in this one module:

    checkpoint/       CRIU's images (and runc's descriptors.json)
    config.dump       JSON: id, name, image, runtime handler, times (checkpointctl's ContainerConfig)
    spec.dump         the container's OCI runtime spec (config.json)
    rootfs-diff.tar   the writable layer's files: the overlay upper dir, whiteouts left out
    deleted.files     JSON list of absolute paths the writable layer deleted from the image
    container.log     the container's CRI log up to the checkpoint
    stats-dump        CRIU's statistics of the dump (a CRIU image)
    dump.log          CRIU's log of the dump

The archive is written to a hidden temporary file in the target directory,
then renamed onto `location`: a reader, or a daemon killed mid-write, never
leaves half an archive under the final name, and a failed or abandoned write
removes its file. It is not fsynced (see write_archive).
`unpack_archive` reads one back for a restore: checked member by member, and a
corrupt or truncated archive refused with nothing left unpacked. `link_layer` takes
the archive a checkpoint image's pull has unpacked already, with the same checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crishim.runtime.checkpoint import follow, safe_tar
from crishim.runtime.checkpoint.follow import Followed
from crishim.runtime.checkpoint.kernel_copy import KernelCopyTar

CHECKPOINT_DIRECTORY = "checkpoint"
CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
ROOTFS_DIFF = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
CONTAINER_LOG = "container.log"
STATS_DUMP = "stats-dump"
DUMP_LOG = "dump.log"

# tarfile copies a member's bytes in chunks of this size (its default, 16 KiB, makes 6,400 Python
# read/write rounds per 100 MiB of CRIU pages, which cost more than the copy itself on a slow node).
COPY_BUFFER = 1 << 20

# The overlay marks a directory whose lower contents it hides with this xattr (value "y").
OPAQUE_XATTR = "trusted.overlay.opaque"
# CRI annotations checkpointctl shows (container, pod, namespace) for an engine it does not know.
CRI_CONTAINER_NAME = "io.kubernetes.cri.container-name"
CRI_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
CRI_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
CRI_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"


class Abandoned(Exception):
    """The caller gave up (timeout, cancelled call) while a thread was still writing."""


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the archive: literal bytes, or a file or directory tree on disk."""

    name: str
    data: bytes | None = None
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What config.dump records of the container (plain values; no record types here)."""

    id: str
    name: str
    image: str
    image_id: str
    image_ref: str
    runtime_handler: str
    created_at_ns: int


def go_time(ns: int) -> str:
    """A time as Go's encoding/json writes time.Time (RFC 3339, nanoseconds, UTC), which the readers parse."""
    if ns <= 0:
        return "0001-01-01T00:00:00Z"
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}".rstrip("0").rstrip(".") + "Z"


def config_dump(info: ContainerInfo, checkpointed_at_ns: int, provenance: dict[str, Any] | None = None) -> bytes:
    """checkpointctl's ContainerConfig, plus where it was taken (provenance.py) under a key readers ignore."""
    config: dict[str, Any] = {
        "id": info.id,
        "name": info.name,
        "rootfsImage": info.image,
        "rootfsImageRef": info.image_id,
        "rootfsImageName": info.image_ref or info.image,
        "runtime": info.runtime_handler,
        "createdTime": go_time(info.created_at_ns),
        "checkpointedTime": go_time(checkpointed_at_ns),
        "restoredTime": go_time(0),
        "restored": False,
    }
    if provenance:
        config["crishim"] = provenance
    return json.dumps(config, indent=2).encode()


def spec_dump(spec: dict[str, Any], cri_annotations: dict[str, str]) -> bytes:
    """The runtime spec, with the CRI names added to its annotations where they are missing."""
    dumped = dict(spec)
    dumped["annotations"] = {**cri_annotations, **spec.get("annotations", {})}
    return json.dumps(dumped, indent=2).encode()


def deleted_files(paths: list[str]) -> bytes:
    """deleted.files: a JSON list of absolute paths, as the readers unmarshal it."""
    return json.dumps(paths).encode()


def with_copy_buffer(tar: tarfile.TarFile) -> None:
    """Makes `tar` copy member bytes COPY_BUFFER at a time (TarFile's copybufsize, which typeshed omits)."""
    tar.copybufsize = COPY_BUFFER  # type: ignore[attr-defined]


# -- the writable layer -------------------------------------------------------------------------


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lower_names(lowers: Iterable[Path], rel: str) -> dict[str, bool]:
    """Names in the image's layers at `rel`, each with whether it is a directory in any of them."""
    names: dict[str, bool] = {}
    for layer in lowers:
        with contextlib.suppress(OSError), os.scandir(layer / rel) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if not _is_whiteout(st):
                    names[entry.name] = names.get(entry.name, False) or stat.S_ISDIR(st.st_mode)
    return names


def _hidden_by_opaque(upper: Path, lowers: list[Path], rel: str) -> Iterator[str]:
    """What an opaque directory hides of the image: lower names the upper lacks, at any depth."""
    for name, is_dir in sorted(_lower_names(lowers, rel).items()):
        child = f"{rel}/{name}" if rel else name
        try:
            st = os.lstat(upper / child)
        except FileNotFoundError:
            yield "/" + child
            continue
        if is_dir and stat.S_ISDIR(st.st_mode):
            yield from _hidden_by_opaque(upper, lowers, child)


def _skipped(rel: str, skip: frozenset[str]) -> bool:
    return any(rel == s or rel.startswith(s + "/") for s in skip)


def write_rootfs_diff(
    upper: Path, out: Path, lowers: list[Path], skip: frozenset[str], abort: threading.Event
) -> list[str]:
    """Blocking: rootfs-diff.tar of the upper dir at `out`; returns deleted.files' paths.

    Whiteouts become deleted paths instead of members; an opaque directory is a member and
    what it hides of the image is deleted. `skip` (relative paths) are the spec's mount
    points: runc made them for its mounts, and the restore mounts them again, as CRI-O skips them.
    """
    deleted: list[str] = []
    with KernelCopyTar.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        with_copy_buffer(tar)
        for dirpath, dirnames, filenames in os.walk(upper):
            if abort.is_set():
                raise Abandoned("the rootfs diff was abandoned")
            base = Path(dirpath)
            rel_dir = base.relative_to(upper).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            kept = []
            for name in sorted(dirnames) + sorted(filenames):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if _skipped(rel, skip):
                    continue
                full = base / name
                st = os.lstat(full)
                if _is_whiteout(st):
                    deleted.append("/" + rel)
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    continue  # a socket has no content; the process that bound it recreates it
                tar.add(full, arcname=rel, recursive=False, filter=_numeric_owner)
                if stat.S_ISDIR(st.st_mode):
                    kept.append(name)
                    if _is_opaque(full):
                        deleted.extend(_hidden_by_opaque(upper, lowers, rel))
            dirnames[:] = [d for d in dirnames if d in kept]
    return deleted


def _numeric_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The node's user names mean nothing inside the container: numeric IDs only.
    info.uname = info.gname = ""
    return info


# -- the archive --------------------------------------------------------------------------------


def partial_path(location: Path, tag: str) -> Path:
    """The hidden file an archive is written to before its rename: beside it, on its filesystem."""
    return location.parent / f".{location.name}.{tag}.partial"


def write_archive(
    location: Path,
    members: list[Member],
    abort: threading.Event,
    partial: Path | None = None,
    followed: Followed | None = None,
) -> None:
    """Blocking: the archive at `location`, complete or not at all (written first to `partial`).

    With `followed`, `partial` holds that file's bytes already, behind room for its header
    (follow.py): the other members go after them, the header into the room, and the file
    is left out where a member's tree holds it.

    Its bytes are not fsynced before the rename, as CRI-O and Podman write their exports
    (straight to the target, no sync at all): syncing a container's memory images doubles
    the checkpoint's cost on a slow disk, for the one case of the node losing power in the
    seconds after the call returned. The rename still makes the archive appear whole or not
    at all to every reader and to a daemon killed mid-write. After a power loss an archive of
    the last seconds may be lost or cut short (ext4's default ordered mode commits a file's
    size only with its data, so a cut archive reads short), and unpack_archive refuses a
    short one as truncated rather than restoring from it.
    """
    if partial is None:
        fd, name = tempfile.mkstemp(dir=location.parent, prefix=f".{location.name}.", suffix=".partial")
        partial = Path(name)
    elif followed is None:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    else:
        fd = os.open(partial, os.O_RDWR | os.O_CLOEXEC)
    renamed = False
    header = b""
    try:
        with os.fdopen(fd, "r+b" if followed else "wb") as fh:
            if followed is not None:
                fh.seek(follow.HEADER_ROOM + _padded(followed.size))
            with KernelCopyTar.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                with_copy_buffer(tar)
                arcname = _arcname(followed, members)
                keep = _owners_leaving_out(arcname)
                for member in members:
                    if abort.is_set():
                        raise Abandoned(f"writing {location} was abandoned")
                    _add(tar, member, keep)
                if followed is not None and arcname is not None:
                    header = _followed_header(tar, followed, arcname)
            if header:
                fh.seek(0)
                fh.write(header)
        if abort.is_set():
            raise Abandoned(f"writing {location} was abandoned")
        os.replace(partial, location)
        renamed = True
    finally:
        if not renamed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _arcname(followed: Followed | None, members: list[Member]) -> str | None:
    """The followed file's name in the archive: under the member whose directory holds it."""
    if followed is None:
        return None
    for member in members:
        if member.path is not None and member.path == followed.source.parent:
            return f"{member.name}/{followed.source.name}"
    raise ValueError(f"{followed.source} is in no directory the archive takes")


def _owners_leaving_out(arcname: str | None) -> Callable[[tarfile.TarInfo], tarfile.TarInfo | None]:
    """tar.add's filter: numeric owners, and the followed file left out (its bytes are in already)."""
    return lambda info: None if info.name == arcname else _numeric_owner(info)


def _followed_header(tar: tarfile.TarFile, followed: Followed, arcname: str) -> bytes:
    """The followed file's header, exactly follow.HEADER_ROOM bytes, as tar.add would have made it."""
    info = _numeric_owner(tar.gettarinfo(str(followed.source), arcname))
    if info.size != followed.size:
        raise OSError(f"{followed.source} changed after it was archived ({followed.size} -> {info.size} bytes)")
    return follow.header_of_length(info, follow.HEADER_ROOM, tar.encoding, tar.errors)


def _add(tar: tarfile.TarFile, member: Member, keep: Callable[[tarfile.TarInfo], tarfile.TarInfo | None]) -> None:
    if member.data is not None:
        info = tarfile.TarInfo(member.name)
        info.size, info.mode = len(member.data), 0o600
        info.mtime = int(datetime.now(UTC).timestamp())
        tar.addfile(info, io.BytesIO(member.data))
    elif member.path is not None:
        tar.add(member.path, arcname=member.name, recursive=True, filter=keep)


# -- reading an archive back (the restore's first step) ----------------------------------------

REQUIRED_MEMBERS = (CHECKPOINT_DIRECTORY, CONFIG_DUMP, SPEC_DUMP)


class CorruptArchive(ValueError):
    """The file is not a checkpoint archive this module can restore from; the message says why."""


@dataclass(frozen=True, slots=True)
class Unpacked:
    """A checked archive unpacked into `root`: its metadata parsed, its members in place."""

    root: Path
    config: dict[str, Any]
    spec: dict[str, Any]
    deleted: list[str]
    # Members left in the archive file, unpacked later by the caller (late_pages.py): their
    # headers give where their bytes are.
    late: tuple[tarfile.TarInfo, ...] = ()


def unpack_archive(
    location: Path, dest: Path, abort: threading.Event, late: Callable[[tarfile.TarInfo], bool] | None = None
) -> Unpacked:
    """Blocking: checks and unpacks the archive into the empty directory `dest`.

    Every member is checked by safe_tar as tarfile's `data` filter would (no absolute
    paths, no '..', no links leading out of `dest`, no devices), on any Python 3.11.
    A truncated or corrupt archive, a missing member or metadata that does not parse
    raises CorruptArchive, and `dest` is left empty again: a refused restore leaves
    nothing behind. Members `late` picks (only of a plain tar, whose offsets are the
    file's) are not unpacked but returned, once known to lie whole in the file.
    """
    with _emptied_on_refusal(dest, "it is not a readable tar archive"):
        left: list[tarfile.TarInfo] = []
        size = location.stat().st_size
        with open_tar(location) as tar:
            for member in tar:
                if abort.is_set():
                    raise Abandoned(f"unpacking {location} was abandoned")
                if late is not None and late(member):
                    if member.offset_data + member.size > size:
                        raise CorruptArchive(f"it ends inside {member.name} (truncated)")
                    left.append(member)
                    continue
                safe_tar.extract(tar, member, dest, strict=True)
        unpacked = _checked(dest)
    return dataclasses.replace(unpacked, late=tuple(left))


@contextlib.contextmanager
def _emptied_on_refusal(dest: Path, unreadable: str) -> Iterator[None]:
    """Any failure leaves `dest` empty again; a tar that does not read is CorruptArchive(`unreadable`: why)."""
    try:
        yield
    except BaseException as exc:
        empty_directory(dest)
        if isinstance(exc, tarfile.TarError | EOFError):
            raise CorruptArchive(f"{unreadable}: {exc}") from exc
        raise


def _checked(dest: Path) -> Unpacked:
    """The members a restore needs, present and parsed, in an unpacked or linked archive."""
    missing = [name for name in REQUIRED_MEMBERS if not (dest / name).exists()]
    if missing:
        raise CorruptArchive(f"it lacks {', '.join(missing)} (truncated, or not a container checkpoint)")
    config = _json_member(dest, CONFIG_DUMP, dict)
    spec = _json_member(dest, SPEC_DUMP, dict)
    deleted = _json_member(dest, DELETED_FILES, list) if (dest / DELETED_FILES).exists() else []
    if not all(isinstance(p, str) and p.startswith("/") for p in deleted):
        raise CorruptArchive(f"{DELETED_FILES} must list absolute paths")
    if (dest / ROOTFS_DIFF).exists():
        _check_rootfs_diff(dest / ROOTFS_DIFF)
    return Unpacked(dest, config, spec, deleted)


def link_layer(layer: Path, dest: Path, abort: threading.Event) -> Unpacked:
    """Blocking: a checkpoint image's layer, unpacked by its pull, linked into the empty `dest` and checked.

    The pull has unpacked the archive once; unpacking its blob again would copy every page
    of the container's memory a second time. Its files are hard-linked instead (copied
    only where `dest` is on another filesystem), so the restore owns names of its own and
    a RemoveImage meanwhile takes nothing from it. Nothing writes to the linked files:
    CRIU only reads its images, and the files it writes on a restore are left out (an
    archive that carries them would otherwise have them truncated in the image's layer).
    An archive holds files and directories only; anything else is refused, and a refusal
    leaves `dest` empty, as `unpack_archive` does.
    """
    with _emptied_on_refusal(dest, f"its {ROOTFS_DIFF} is not a readable tar archive"):
        _link_tree(layer, dest, "", abort)
        linked = _checked(dest)
    return linked


# What CRIU writes into the image directory on a restore: never linked from a layer.
RESTORE_OUTPUTS = frozenset({f"{CHECKPOINT_DIRECTORY}/stats-restore", f"{CHECKPOINT_DIRECTORY}/restore.log"})


def _link_tree(source: Path, dest: Path, prefix: str, abort: threading.Event) -> None:
    with os.scandir(source) as entries:
        for entry in entries:
            if abort.is_set():
                raise Abandoned(f"linking {source} was abandoned")
            rel = prefix + entry.name
            st = entry.stat(follow_symlinks=False)
            target = dest / entry.name
            if stat.S_ISDIR(st.st_mode):
                target.mkdir(mode=stat.S_IMODE(st.st_mode))
                _link_tree(Path(entry.path), target, rel + "/", abort)
            elif stat.S_ISREG(st.st_mode):
                if rel not in RESTORE_OUTPUTS:
                    _link_or_copy(Path(entry.path), target)
            else:
                raise CorruptArchive(f"member {rel!r} is neither a file nor a directory")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(source, target)


def is_plain_tar(location: Path) -> bool:
    """Blocking: whether the archive is an uncompressed tar (its POSIX magic), whose size is its contents'."""
    try:
        with open(location, "rb") as raw:
            header = raw.read(tarfile.BLOCKSIZE)
    except OSError:
        return False
    return header[257:262] == b"ustar"


# zstd's frame magic: tarfile opens gzip, bzip2 and xz by itself, not zstd.
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@contextlib.contextmanager
def open_tar(location: Path) -> Iterator[tarfile.TarFile]:
    """The archive as a tar, plain or compressed as the engines export it (gzip, bzip2, xz, zstd)."""
    with open(location, "rb") as raw:
        if raw.read(4) != _ZSTD_MAGIC:
            raw.seek(0)
            with KernelCopyTar.open(fileobj=raw, mode="r:*") as tar:
                with_copy_buffer(tar)
                yield tar
            return
        raw.seek(0)
        import zstandard  # only for a zstd archive, never at start-up

        try:
            with (
                zstandard.ZstdDecompressor().stream_reader(raw) as stream,
                tarfile.open(fileobj=stream, mode="r|") as tar,
            ):
                with_copy_buffer(tar)
                yield tar
        except zstandard.ZstdError as exc:
            raise CorruptArchive(f"its zstd stream is corrupt: {exc}") from exc


def _json_member(root: Path, name: str, kind: type) -> Any:
    try:
        value = json.loads((root / name).read_bytes())
    except ValueError as exc:
        raise CorruptArchive(f"{name} is not JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise CorruptArchive(f"{name} is not a JSON {'object' if kind is dict else 'list'}")
    return value


def _check_rootfs_diff(path: Path) -> None:
    """Reads the nested tar to its end: a cut one fails here, not half-way into a container's layer."""
    with tarfile.open(path, "r:") as diff:
        for member in diff:
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                raise CorruptArchive(f"{ROOTFS_DIFF} member {member.name!r} leaves the container's root")
            if member.isfile():
                data = diff.extractfile(member)
                if data is not None:
                    while data.read(1 << 20):
                        pass


def empty_directory(directory: Path, keep: Path | None = None) -> None:
    """Blocking: removes what `directory` holds (a refused unpack's files) but `keep`, keeping it."""
    for entry in list(directory.iterdir()) if directory.is_dir() else []:
        if entry == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
