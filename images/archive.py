"""Offline import: an OCI image layout (directory or tar) or a `docker save` tar.

Layers go through the same unpack as pulls (digests and diff IDs verified,
whiteouts converted, escapes refused); names come from the layout's
`io.containerd.image.name` / `org.opencontainers.image.ref.name` annotations
or docker's RepoTags.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tarfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import InvalidArgument, NotFound
from .layerstream import READ_SIZE
from .manifest import INDEX_TYPES, parse_image_manifest, select_from_index
from .metadata import LayerRow
from .records import ImageRecord
from .reference import parse_reference
from .unpack import chain_ids, resolve_deferred_links, unpack_layer

if TYPE_CHECKING:
    from .store import ImageStore

CONTAINERD_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"


class _Source:
    """Files of a layout, from a directory or a tar archive."""

    def __init__(self, path: Path, stack: ExitStack) -> None:
        self.dir: Path | None = path if path.is_dir() else None
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if self.dir is None:
            try:
                self.tar = stack.enter_context(tarfile.open(path, "r:*"))
            except (tarfile.TarError, OSError) as exc:
                raise InvalidArgument(f"{path} is neither a directory nor a readable tar archive: {exc}") from exc
            for member in self.tar.getmembers():
                self.members[member.name.removeprefix("./")] = member

    def has(self, name: str) -> bool:
        if self.dir is not None:
            return (self.dir / name).is_file()
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        if self.dir is not None:
            if ".." in Path(name).parts:
                raise InvalidArgument(f"archive path {name!r} contains '..'")
            try:
                return open(self.dir / name, "rb")
            except FileNotFoundError as exc:
                raise NotFound(f"the archive lacks {name}") from exc
        member = self.members.get(name.removeprefix("./"))
        assert self.tar is not None
        handle = self.tar.extractfile(member) if member is not None else None
        if handle is None:
            raise NotFound(f"the archive lacks {name}")
        return handle

    def read(self, name: str) -> bytes:
        with self.open(name) as handle:
            return handle.read()

    def blob_name(self, digest: str) -> str:
        return "blobs/" + digest.replace(":", "/", 1)


def _reader(handle: IO[bytes]) -> Callable[[], bytes | None]:
    def read() -> bytes | None:
        return handle.read(READ_SIZE) or None

    return read


def _names_from(annotations: dict[str, str]) -> list[str]:
    names = []
    for key in (CONTAINERD_NAME, OCI_REF_NAME):
        value = annotations.get(key, "")
        if value and ("/" in value or ":" in value):
            try:
                ref = parse_reference(value)
            except InvalidArgument:
                continue
            if ref.repo_tag:
                names.append(ref.repo_tag)
    return list(dict.fromkeys(names))


def _import_image(
    store: ImageStore,
    src: _Source,
    config_raw: bytes,
    layers: list[tuple[str, str | None]],
    tags: list[str],
    manifest_digest: str,
    manifest_raw: bytes,
) -> ImageRecord:
    """layers: (archive file name, expected blob digest or None)."""
    config = json.loads(config_raw)
    diff_ids = list(config.get("rootfs", {}).get("diff_ids", []))
    if len(diff_ids) != len(layers):
        raise InvalidArgument(f"image config lists {len(diff_ids)} diff IDs but the archive {len(layers)} layers")
    chains = chain_ids(diff_ids)
    image_id = "sha256:" + hashlib.sha256(config_raw).hexdigest()
    size = len(config_raw)
    for i, ((name, digest), diff_id, chain) in enumerate(zip(layers, diff_ids, chains, strict=True)):
        existing = store.meta.layer(chain)
        if existing is not None and store.layer_dir(chain).is_dir():
            size += existing.blob_size
            continue
        lowers = [store.layer_dir(c) for c in reversed(chains[:i])]
        size += _import_layer(store, src, name, digest or _digest_of(src, name), diff_id, chain, lowers).blob_size
    if not store.content.has(image_id):
        store.content.write_bytes(image_id, config_raw)
    store.meta.record_image(
        image_id=image_id,
        config=config,
        manifest_digest=manifest_digest,
        manifest=manifest_raw,
        size=size,
        layers=chains,
        tags=tags,
        digests=[],
    )
    return store.resolve(image_id)


def _digest_of(src: _Source, name: str) -> str:
    """A docker save archive names its layers by path only: hash the file first."""
    hasher = hashlib.sha256()
    with src.open(name) as handle:
        while chunk := handle.read(READ_SIZE):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def _import_layer(
    store: ImageStore, src: _Source, name: str, digest: str, diff_id: str, chain: str, lowers: list[Path]
) -> LayerRow:
    """Unpacks one layer file of the archive (verified as a pulled one is) and installs it."""
    fetcher = store.puller.layers
    tmpdir = fetcher.new_tmpdir()
    writer = None if store.content.has(digest) else store.content.writer(digest)
    try:
        with src.open(name) as handle:
            result = unpack_layer(
                _reader(handle),
                tmpdir,
                where=f"layer {name} of the archive",
                blob=writer,
                expected_digest=digest,
                expected_diff_id=diff_id,
            )
        if result.deferred_links:
            resolve_deferred_links(tmpdir, result.deferred_links, lowers, f"layer {name}")
        return fetcher.install_layer(tmpdir, chain, result, writer)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise


def _import_sync(store: ImageStore, path: Path) -> list[ImageRecord]:
    with ExitStack() as stack:
        src = _Source(path, stack)
        if src.has("index.json"):
            return _import_oci(store, src)
        if src.has("manifest.json"):
            return _import_docker(store, src)
        raise InvalidArgument(
            f"{path} is not an OCI image layout (no index.json) nor a docker save archive (no manifest.json)"
        )


def _import_oci(store: ImageStore, src: _Source) -> list[ImageRecord]:
    index = json.loads(src.read("index.json"))
    out: list[ImageRecord] = []
    for entry in index.get("manifests", []):
        annotations = dict(entry.get("annotations") or {})
        desc: dict[str, Any] = entry
        raw = src.read(src.blob_name(desc["digest"]))
        data = json.loads(raw)
        if desc.get("mediaType") in INDEX_TYPES or "manifests" in data:
            chosen = select_from_index(data, f"index {desc['digest']}", store.platform)
            raw = src.read(src.blob_name(chosen.digest))
            data = json.loads(raw)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        config, layers = parse_image_manifest(data, f"manifest {digest}")
        config_raw = src.read(src.blob_name(config.digest))
        if "sha256:" + hashlib.sha256(config_raw).hexdigest() != config.digest:
            raise InvalidArgument(f"config blob {config.digest} in the archive does not match its digest")
        out.append(
            _import_image(
                store,
                src,
                config_raw,
                [(src.blob_name(d.digest), d.digest) for d in layers],
                _names_from(annotations),
                entry["digest"],
                raw,
            )
        )
    return out


def _import_docker(store: ImageStore, src: _Source) -> list[ImageRecord]:
    manifest = json.loads(src.read("manifest.json"))
    if not isinstance(manifest, list):
        raise InvalidArgument("manifest.json of a docker save archive must be a list")
    out = []
    for entry in manifest:
        config_raw = src.read(entry["Config"])
        tags = []
        for tag in entry.get("RepoTags") or []:
            ref = parse_reference(tag)
            if ref.repo_tag:
                tags.append(ref.repo_tag)
        entry_raw = json.dumps(entry).encode()
        out.append(
            _import_image(
                store,
                src,
                config_raw,
                [(name, None) for name in entry["Layers"]],
                tags,
                "sha256:" + hashlib.sha256(entry_raw).hexdigest(),
                entry_raw,
            )
        )
    return out


async def import_archive(store: ImageStore, path: Path) -> list[ImageRecord]:
    return await asyncio.to_thread(_import_sync, store, path)
