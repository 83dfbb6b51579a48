"""Build OCI images with our own code: layers as tars, config, manifest, index, layout.

Tests and the conformance suite need images whose every byte we control (users,
whiteouts, hardlinks, setuid bits, multi-platform indexes, Docker media types), and
CI has no docker, buildah or skopeo. Everything here is deterministic: the same
inputs give the same digests, because timestamps are fixed, tar headers carry no
host names and gzip writes no mtime or file name. The daemon builds its pause image
(pause.py) with these; what only tests use (busybox roots, artifacts, layout tars)
is in tests/support/testimages.py.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import InvalidArgument

Compression = Literal["gzip", "zstd", "none"]
EntryKind = Literal["file", "dir", "symlink", "hardlink"]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"

# Fixed timestamp for tar headers and the config's "created": determinism over realism.
EPOCH = 0
CREATED = "1970-01-01T00:00:00Z"

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


def sha256_digest(data: bytes) -> str:
    import hashlib  # not at the top: it loads libcrypto, which an idle daemon does without

    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no spaces: two builds of the same thing are byte-identical."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One tar member of a layer. `path` is relative to the root ("etc/passwd")."""

    path: str
    kind: EntryKind = "file"
    data: bytes | None = None
    source: Path | None = None
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def _rel(path: str) -> str:
    rel = path.strip("/")
    if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise InvalidArgument(f"layer path {path!r} must be a normalised path below the root")
    return rel


def regular(path: str, data: bytes = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> FileEntry:
    return FileEntry(_rel(path), "file", data=data, mode=mode, uid=uid, gid=gid)


def host_file(path: str, source: Path | str, *, mode: int | None = None, uid: int = 0, gid: int = 0) -> FileEntry:
    """A regular file whose content is read from the host when the layer is built."""
    src = Path(source)
    if mode is None:
        mode = src.stat().st_mode & 0o7777
    return FileEntry(_rel(path), "file", source=src, mode=mode, uid=uid, gid=gid)


def directory(path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> FileEntry:
    return FileEntry(_rel(path), "dir", mode=mode, uid=uid, gid=gid)


def symlink(path: str, target: str, *, uid: int = 0, gid: int = 0) -> FileEntry:
    return FileEntry(_rel(path), "symlink", target=target, mode=0o777, uid=uid, gid=gid)


def hardlink(path: str, target: str) -> FileEntry:
    """A hardlink to `target`, an earlier entry of the same layer (tar needs it first); its
    header takes the target's mode and owner (layer_tar)."""
    return FileEntry(_rel(path), "hardlink", target=_rel(target), mode=0o644)


def whiteout(path: str) -> FileEntry:
    """Hide `path` of a lower layer: an empty file `.wh.NAME` beside it."""
    rel = _rel(path)
    parent, _, name = rel.rpartition("/")
    return regular(f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name, mode=0o600)


def opaque(dir_path: str) -> FileEntry:
    """Hide every lower-layer child of `dir_path` (the directory itself stays)."""
    return regular(f"{_rel(dir_path)}/{OPAQUE_MARKER}", mode=0o600)


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A built layer: the compressed blob and the digest of its uncompressed tar."""

    data: bytes
    digest: str
    diff_id: str
    media_type: str

    @property
    def size(self) -> int:
        return len(self.data)


def layer_tar(entries: Iterable[FileEntry]) -> bytes:
    """The uncompressed tar of a layer, entries in the order given.

    A hard link's header carries its target's mode and owner, as tar and Go's archive/tar
    write it: some appliers (containerd's) chmod the shared inode to the link's header mode.
    """
    buf = io.BytesIO()
    written: dict[str, FileEntry] = {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            owner = written.get(entry.target, entry) if entry.kind == "hardlink" else entry
            written[entry.path] = owner
            info = tarfile.TarInfo(entry.path)
            info.mtime = EPOCH
            info.uid, info.gid = owner.uid, owner.gid
            info.uname = info.gname = ""
            info.mode = owner.mode & 0o7777
            payload: bytes | None = None
            if entry.kind == "file":
                payload = entry.data if entry.source is None else entry.source.read_bytes()
                payload = payload or b""
                info.type = tarfile.REGTYPE
                info.size = len(payload)
            elif entry.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
            elif entry.kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = entry.target
            else:
                raise InvalidArgument(f"unknown layer entry kind {entry.kind!r} for {entry.path}")
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        out = io.BytesIO()
        # mtime=0 and an empty file name keep the gzip header identical between builds.
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
            gz.write(data)
        return out.getvalue()
    if compression == "zstd":
        import zstandard  # only here: the daemon builds gzip (pause) layers alone

        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "none":
        return data
    raise InvalidArgument(f"compression must be gzip, zstd or none, not {compression!r}")


def layer_media_type(compression: Compression, docker: bool) -> str:
    if docker:
        if compression == "zstd":
            raise InvalidArgument("Docker schema2 has no zstd layer type: use OCI media types for zstd")
        return DOCKER_LAYER + (".gzip" if compression == "gzip" else "")
    return OCI_LAYER + {"gzip": "+gzip", "zstd": "+zstd", "none": ""}[compression]


def build_layer(entries: Iterable[FileEntry], compression: Compression = "gzip", *, docker: bool = False) -> LayerBlob:
    raw = layer_tar(entries)
    blob = compress(raw, compression)
    return LayerBlob(blob, sha256_digest(blob), sha256_digest(raw), layer_media_type(compression, docker))


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def as_dict(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The runtime part of an image config ("config" in the OCI image spec)."""

    user: str = ""
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.user:
            out["User"] = self.user
        if self.env:
            out["Env"] = list(self.env)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.exposed_ports:
            out["ExposedPorts"] = {p if "/" in p else f"{p}/tcp": {} for p in self.exposed_ports}
        if self.volumes:
            out["Volumes"] = {v: {} for v in self.volumes}
        return out


# --------------------------------------------------------------------------- images


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """One platform's image: manifest, config and layers, all held in memory."""

    manifest: bytes
    media_type: str
    config: bytes
    config_media_type: str
    layers: tuple[LayerBlob, ...]
    platform: Platform

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        """The image ID a runtime reports for this image."""
        return sha256_digest(self.config)

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    def descriptor(self, *, with_platform: bool = False) -> dict[str, object]:
        desc: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.manifest),
        }
        if with_platform:
            desc["platform"] = self.platform.as_dict()
        return desc

    def blobs(self) -> dict[str, bytes]:
        out = {layer.digest: layer.data for layer in self.layers}
        out[self.config_digest] = self.config
        out[self.digest] = self.manifest
        return out


@dataclass(frozen=True, slots=True)
class BuiltIndex:
    """A multi-platform index (OCI image index or Docker manifest list)."""

    manifest: bytes
    media_type: str
    images: tuple[BuiltImage, ...]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    def descriptor(self, *, with_platform: bool = False) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest)}

    def blobs(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for image in self.images:
            out.update(image.blobs())
        out[self.digest] = self.manifest
        return out


Built = BuiltImage | BuiltIndex


def build_image(
    layers: Sequence[Sequence[FileEntry] | LayerBlob],
    config: ImageConfig | None = None,
    *,
    compression: Compression = "gzip",
    docker: bool = False,
    platform: Platform | None = None,
    annotations: Mapping[str, str] | None = None,
    history: bool = True,
) -> BuiltImage:
    """Build an image from layers (entry lists, or layers built beforehand to share them)."""
    platform = platform or Platform()
    config = config if config is not None else ImageConfig()
    built = [
        layer if isinstance(layer, LayerBlob) else build_layer(layer, compression, docker=docker) for layer in layers
    ]
    for layer in built:
        if docker and not layer.media_type.startswith(DOCKER_LAYER):
            raise InvalidArgument(f"layer {layer.digest} has OCI media type {layer.media_type} in a Docker image")
    config_doc: dict[str, object] = {
        "created": CREATED,
        **platform.as_dict(),
        "config": config.as_dict(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built]},
    }
    if history:
        config_doc["history"] = [{"created": CREATED, "created_by": "crishim images.build"} for _ in built]
    config_bytes = canonical_json(config_doc)
    config_type = DOCKER_CONFIG if docker else OCI_CONFIG
    manifest_doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {
            "mediaType": config_type,
            "digest": sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{"mediaType": lyr.media_type, "digest": lyr.digest, "size": lyr.size} for lyr in built],
    }
    if annotations:
        if docker:
            raise InvalidArgument("Docker schema2 manifests have no annotations: use OCI media types")
        manifest_doc["annotations"] = dict(annotations)
    return BuiltImage(
        manifest=canonical_json(manifest_doc),
        media_type=DOCKER_MANIFEST if docker else OCI_MANIFEST,
        config=config_bytes,
        config_media_type=config_type,
        layers=tuple(built),
        platform=platform,
    )


def build_index(images: Sequence[BuiltImage], *, docker: bool = False) -> BuiltIndex:
    """Bundle per-platform images into one index; every image must use the same family of types."""
    if not images:
        raise InvalidArgument("an index needs at least one image")
    want = DOCKER_MANIFEST if docker else OCI_MANIFEST
    for image in images:
        if image.media_type != want:
            raise InvalidArgument(f"image {image.digest} is {image.media_type}, the index needs {want}")
    media_type = DOCKER_LIST if docker else OCI_INDEX
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [image.descriptor(with_platform=True) for image in images],
    }
    return BuiltIndex(canonical_json(doc), media_type, tuple(images))


# --------------------------------------------------------------------------- layout


def ref_annotations(ref: str) -> dict[str, str]:
    """index.json names: the tag in the OCI annotation, the full name in containerd's."""
    last = ref.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ref
    out = {REF_NAME_ANNOTATION: tag}
    if ref != tag:
        out[IMAGE_NAME_ANNOTATION] = ref
    return out


def layout_files(refs: Mapping[str, Built]) -> dict[str, bytes]:
    """Every file of an OCI image layout holding `refs` (name -> image), by relative path."""
    files: dict[str, bytes] = {"oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"})}
    manifests = []
    for ref, built in refs.items():
        for digest, data in built.blobs().items():
            files["blobs/sha256/" + digest.removeprefix("sha256:")] = data
        desc = built.descriptor()
        desc["annotations"] = ref_annotations(ref)
        if isinstance(built, BuiltImage):
            desc["platform"] = built.platform.as_dict()
        manifests.append(desc)
    files["index.json"] = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    return files


def write_layout(dest: Path, refs: Mapping[str, Built]) -> Path:
    """Write (or add to a fresh) OCI image layout directory at `dest`; returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel, data in layout_files(refs).items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return dest
