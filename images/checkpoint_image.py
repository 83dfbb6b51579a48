"""A checkpoint archive packed as an OCI image, pushed and pulled like any image.

Podman, buildah and checkpointctl pack a container checkpoint this way, and CRI-O
and containerd restore from one: a single layer whose files are the archive's
members (checkpoint/, config.dump, spec.dump, rootfs-diff.tar...), and on the
image manifest an annotation naming the checkpointed container. CRI-O's is
`io.kubernetes.cri-o.annotations.checkpoint.name`, containerd's
`io.kubernetes.containerd.annotations.checkpoint.name`; either marks a
checkpoint image here. CreateContainer naming such an image restores from its
layer (runtime/checkpoint/restore.py) instead of running the image.

`build_checkpoint_image` writes one as an OCI image layout, which `crishim
images import` loads and any registry client pushes. The archive (plain tar, or
gzip, bzip2, xz or zstd compressed, as the engines export it) is checked first
and its tar streamed into the gzip layer: an archive of GBs of memory pages is
never held in memory. The layer is the archive's tar byte for byte, so its diff ID
is that tar's digest, and the same archive always gives the same image.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from .build import (
    CREATED,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    canonical_json,
    ref_annotations,
    sha256_digest,
)
from .errors import InvalidArgument
from .platforms import host_platform
from .reference import parse_reference

CRIO_NAME_ANNOTATION = "io.kubernetes.cri-o.annotations.checkpoint.name"
CONTAINERD_NAME_ANNOTATION = "io.kubernetes.containerd.annotations.checkpoint.name"
NAME_ANNOTATIONS = (CRIO_NAME_ANNOTATION, CONTAINERD_NAME_ANNOTATION)

# What every checkpoint archive holds (runtime/checkpoint/archive.py's REQUIRED_MEMBERS; the
# images package does not import the runtime, and a unit test keeps the two lists equal).
REQUIRED_MEMBERS = ("checkpoint", "config.dump", "spec.dump")
CONFIG_DUMP = "config.dump"
MAX_CONFIG_DUMP = 1 << 20
CHUNK = 1 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def checkpoint_name(annotations: Mapping[str, str]) -> str | None:
    """The checkpointed container's name when the annotations mark a checkpoint image, else None.

    The key's presence is the mark, as in CRI-O: a builder may leave the name empty."""
    for key in NAME_ANNOTATIONS:
        if key in annotations:
            return annotations[key]
    return None


@dataclass(frozen=True, slots=True)
class CheckpointImage:
    """What `build_checkpoint_image` wrote."""

    layout: Path
    name: str  # the reference the layout's index names it by
    manifest_digest: str
    image_id: str  # the config digest: the ID a runtime reports for it
    container_name: str


@contextlib.contextmanager
def open_tar_stream(path: Path) -> Iterator[IO[bytes]]:
    """The archive's tar bytes, decompressed as they are read, whatever the engine compressed it with."""
    with open(path, "rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        if magic.startswith(_GZIP_MAGIC):
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield cast(IO[bytes], gz)
        elif magic.startswith(_XZ_MAGIC):
            with lzma.LZMAFile(raw) as xz:
                yield cast(IO[bytes], xz)
        elif magic.startswith(_BZIP2_MAGIC):
            with bz2.BZ2File(raw) as bz:
                yield cast(IO[bytes], bz)
        elif magic.startswith(_ZSTD_MAGIC):
            import zstandard  # only for a zstd archive

            with zstandard.ZstdDecompressor().stream_reader(raw) as zst:
                yield cast(IO[bytes], zst)
        else:
            yield raw


def _decode_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
    with contextlib.suppress(ImportError):
        import zstandard

        errors += (zstandard.ZstdError,)
    return errors


def check_archive(path: Path) -> dict[str, Any]:
    """Reads the archive through once; returns its config.dump. InvalidArgument says what is wrong.

    A light check, no unpacking: a readable tar to its end (a truncated one fails here), the
    members every checkpoint has, no member leading out of the layer, config.dump a JSON object.
    The restore checks it all again, member by member, before it uses any of it."""
    where = f"{path} is not a usable checkpoint archive"
    seen: set[str] = set()
    config: Any = None
    try:
        with open_tar_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts:
                    raise InvalidArgument(f"{where}: member {member.name!r} leads out of the archive")
                if parts:
                    seen.add(parts[0])
                if name == CONFIG_DUMP and member.isfile():
                    if member.size > MAX_CONFIG_DUMP:
                        raise InvalidArgument(f"{where}: {CONFIG_DUMP} is {member.size} bytes, too large")
                    data = tar.extractfile(member)
                    config = _json(data.read() if data is not None else b"", where)
    except _decode_errors() as exc:
        raise InvalidArgument(f"{where}: it is not a readable tar archive: {exc}") from None
    missing = [name for name in REQUIRED_MEMBERS if name not in seen]
    if missing:
        raise InvalidArgument(f"{where}: it lacks {', '.join(missing)} (truncated, or not a container checkpoint)")
    if not isinstance(config, dict):
        raise InvalidArgument(f"{where}: {CONFIG_DUMP} is not a JSON object")
    return config


def _json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: {CONFIG_DUMP} is not JSON ({exc})") from None


class _Hashing:
    """A file wrapper hashing what is written through it: the compressed layer's digest."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _write_layer(archive: Path, blobs: Path) -> tuple[str, str, int]:
    """The archive's tar, gzipped into `blobs` under its digest; (digest, diff ID, size)."""
    fd, name = tempfile.mkstemp(dir=blobs, prefix=".layer-", suffix=".partial")
    try:
        diff = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            hashing = _Hashing(out)
            # mtime 0 and no file name: the same archive gives the same blob.
            with (
                open_tar_stream(archive) as stream,
                gzip.GzipFile(filename="", mode="wb", fileobj=hashing, mtime=0, compresslevel=6) as out_gz,
            ):
                while chunk := stream.read(CHUNK):
                    diff.update(chunk)
                    out_gz.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = "sha256:" + hashing.hash.hexdigest()
        os.replace(name, blobs / digest.removeprefix("sha256:"))
        return digest, "sha256:" + diff.hexdigest(), hashing.size
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def _architecture(config_dump: dict[str, Any]) -> str:
    """Where the checkpoint was taken (crishim records it), else this machine: CRIU restores only there."""
    recorded = config_dump.get("crishim")
    if isinstance(recorded, dict) and isinstance(recorded.get("architecture"), str) and recorded["architecture"]:
        return str(recorded["architecture"])
    return host_platform().architecture


def build_checkpoint_image(archive: Path, ref: str, dest: Path) -> CheckpointImage:
    """Blocking: an OCI image layout at `dest` (absent or empty) holding `archive` as image `ref`.

    Refuses (InvalidArgument) an archive that is not a checkpoint, a reference that is not a
    name:tag, or a `dest` holding anything; on any failure what it wrote is removed."""
    parsed = parse_reference(ref)
    name = parsed.repo_tag
    if name is None:
        raise InvalidArgument(f"image reference {ref!r} has a digest: give a name and tag, such as 'app-ckpt:v1'")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidArgument(f"{dest} exists and is not an empty directory: give a new directory for the layout")
    config_dump = check_archive(archive)
    container_name = str(config_dump.get("name") or "")
    created = not dest.exists()
    blobs = dest / "blobs" / "sha256"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        layer_digest, diff_id, layer_size = _write_layer(archive, blobs)
        checkpointed = config_dump.get("checkpointedTime")
        config = canonical_json(
            {
                "created": checkpointed if isinstance(checkpointed, str) and checkpointed else CREATED,
                "architecture": _architecture(config_dump),
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created_by": "crishim images checkpoint-image", "comment": "checkpoint archive"}],
            }
        )
        manifest = canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER + "+gzip", "digest": layer_digest, "size": layer_size}],
                "annotations": {key: container_name for key in NAME_ANNOTATIONS},
            }
        )
        for data in (config, manifest):
            (blobs / sha256_digest(data).removeprefix("sha256:")).write_bytes(data)
        descriptor = {
            "mediaType": OCI_MANIFEST,
            "digest": sha256_digest(manifest),
            "size": len(manifest),
            "annotations": ref_annotations(name),
        }
        (dest / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}
        (dest / "index.json").write_bytes(canonical_json(index))  # last: a layout without it is not one
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for entry in list(dest.iterdir()):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise
    return CheckpointImage(dest, name, sha256_digest(manifest), sha256_digest(config), container_name)
