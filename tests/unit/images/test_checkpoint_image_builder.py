"""images/checkpoint_image.py: a checkpoint archive packed as an OCI image layout."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crishim.images import checkpoint_image as ci
from crishim.images.errors import InvalidArgument
from crishim.images.metadata import manifest_annotations
from crishim.runtime.checkpoint import archive

CONFIG_DUMP = {"id": "c" * 64, "name": "counter", "rootfsImageName": "busybox:latest"}


def write_archive(path: Path, *, without: str = "", extra: dict[str, bytes] | None = None, config: Any = None) -> Path:
    """An archive in the checkpoint layout (no real CRIU images: the builder reads none)."""
    members = {
        "config.dump": json.dumps(CONFIG_DUMP if config is None else config).encode(),
        "spec.dump": json.dumps({"process": {"args": ["sh"]}}).encode(),
        "checkpoint/pages-1.img": b"\x01" * 300_000,
        "rootfs-diff.tar": b"",
        **(extra or {}),
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        if without != "checkpoint":
            directory = tarfile.TarInfo("checkpoint")
            directory.type, directory.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(directory)
        for name, data in members.items():
            if name.split("/")[0] == without:
                continue
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return path


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def read_layout(layout: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(index.json's one descriptor, the manifest, the config)."""
    index = json.loads((layout / "index.json").read_bytes())
    assert json.loads((layout / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    [descriptor] = index["manifests"]
    manifest = json.loads(blob(layout, descriptor["digest"]))
    config = json.loads(blob(layout, manifest["config"]["digest"]))
    return descriptor, manifest, config


def test_the_image_is_one_gzip_layer_holding_the_archive_with_the_checkpoint_annotations(tmp_path: Path) -> None:
    source = write_archive(tmp_path / "c.tar")
    built = ci.build_checkpoint_image(source, "127.0.0.1:5000/ckpt/counter:v1", tmp_path / "layout")
    descriptor, manifest, config = read_layout(built.layout)

    assert descriptor["annotations"]["io.containerd.image.name"] == "127.0.0.1:5000/ckpt/counter:v1"
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    assert descriptor["digest"] == built.manifest_digest
    assert manifest["annotations"] == {
        "io.kubernetes.cri-o.annotations.checkpoint.name": "counter",
        "io.kubernetes.containerd.annotations.checkpoint.name": "counter",
    }
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    data = blob(built.layout, layer["digest"])
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
    assert layer["size"] == len(data)
    # The layer's tar is the archive's, byte for byte: its members are the archive's members.
    assert gzip.decompress(data) == source.read_bytes()
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()],
    }
    assert config["os"] == "linux"
    assert config["architecture"] in {"amd64", "arm64", "ppc64le", "s390x", "riscv64", "386", "arm"}
    assert "sha256:" + hashlib.sha256(blob(built.layout, manifest["config"]["digest"])).hexdigest() == built.image_id
    assert built.container_name == "counter"
    assert ci.checkpoint_name(manifest["annotations"]) == "counter"


def test_the_architecture_is_where_the_checkpoint_was_taken(tmp_path: Path) -> None:
    source = write_archive(tmp_path / "c.tar", config={**CONFIG_DUMP, "crishim": {"architecture": "s390x"}})
    _, _, config = read_layout(ci.build_checkpoint_image(source, "ckpt:v1", tmp_path / "layout").layout)
    assert config["architecture"] == "s390x"


def test_the_same_archive_gives_the_same_image(tmp_path: Path) -> None:
    source = write_archive(tmp_path / "c.tar")
    first = ci.build_checkpoint_image(source, "ckpt:v1", tmp_path / "one")
    second = ci.build_checkpoint_image(source, "ckpt:v1", tmp_path / "two")
    assert (first.manifest_digest, first.image_id) == (second.manifest_digest, second.image_id)
    assert first.name == "docker.io/library/ckpt:v1"


COMPRESSIONS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "xz": lzma.compress,
    "bzip2": bz2.compress,
}


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
def test_a_compressed_archive_gives_the_image_of_its_tar(tmp_path: Path, compression: str) -> None:
    plain = write_archive(tmp_path / "c.tar")
    packed = tmp_path / f"c.tar.{compression}"
    packed.write_bytes(COMPRESSIONS[compression](plain.read_bytes()))
    from_plain = ci.build_checkpoint_image(plain, "ckpt:v1", tmp_path / "plain")
    from_packed = ci.build_checkpoint_image(packed, "ckpt:v1", tmp_path / "packed")
    assert from_packed.image_id == from_plain.image_id  # same diff ID: the same tar inside


def test_a_zstd_archive_gives_the_image_of_its_tar(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    plain = write_archive(tmp_path / "c.tar")
    packed = tmp_path / "c.tar.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    from_packed = ci.build_checkpoint_image(packed, "ckpt:v1", tmp_path / "packed")
    assert from_packed.image_id == ci.build_checkpoint_image(plain, "ckpt:v1", tmp_path / "plain").image_id


def truncated(path: Path) -> Path:
    whole = write_archive(path).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


def truncated_gzip(path: Path) -> Path:
    packed = gzip.compress(write_archive(path).read_bytes())
    path.write_bytes(packed[: len(packed) // 2])
    return path


BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "not a tar": (lambda p: (p.write_bytes(b"\x00garbage" * 1000), p)[1], "not a readable tar archive"),
    "truncated": (truncated, "not a readable tar archive"),
    "truncated gzip": (truncated_gzip, "not a readable tar archive"),
    "no config.dump": (lambda p: write_archive(p, without="config.dump"), "it lacks config.dump"),
    "no checkpoint": (lambda p: write_archive(p, without="checkpoint"), "it lacks checkpoint"),
    "config.dump not an object": (lambda p: write_archive(p, config=[1]), "config.dump is not a JSON object"),
    "a member leading out": (lambda p: write_archive(p, extra={"../escape": b"x"}), "leads out of the archive"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_archive_is_refused_saying_why_and_nothing_is_written(tmp_path: Path, kind: str) -> None:
    make, said = BAD[kind]
    source = make(tmp_path / "bad.tar")
    with pytest.raises(InvalidArgument, match="is not a usable checkpoint archive") as refused:
        ci.build_checkpoint_image(source, "ckpt:v1", tmp_path / "layout")
    assert said in str(refused.value)
    assert not (tmp_path / "layout").exists()


def test_a_used_directory_or_a_digest_reference_is_refused(tmp_path: Path) -> None:
    source = write_archive(tmp_path / "c.tar")
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep").write_text("mine")
    with pytest.raises(InvalidArgument, match="is not an empty directory"):
        ci.build_checkpoint_image(source, "ckpt:v1", used)
    assert [p.name for p in used.iterdir()] == ["keep"]
    with pytest.raises(InvalidArgument, match="has a digest"):
        ci.build_checkpoint_image(source, "ckpt@sha256:" + "a" * 64, tmp_path / "layout")
    assert not (tmp_path / "layout").exists()


def test_an_empty_directory_is_filled(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    built = ci.build_checkpoint_image(write_archive(tmp_path / "c.tar"), "ckpt:v1", empty)
    assert (empty / "index.json").is_file()
    assert read_layout(empty)[0]["digest"] == built.manifest_digest


def test_either_engines_annotation_marks_a_checkpoint_image() -> None:
    assert ci.checkpoint_name({"io.kubernetes.cri-o.annotations.checkpoint.name": "app"}) == "app"
    assert ci.checkpoint_name({"io.kubernetes.containerd.annotations.checkpoint.name": ""}) == ""
    assert ci.checkpoint_name({"org.opencontainers.image.ref.name": "v1"}) is None
    assert ci.checkpoint_name({}) is None


def test_the_members_checked_are_the_archives_required_ones() -> None:
    assert ci.REQUIRED_MEMBERS == archive.REQUIRED_MEMBERS
    assert ci.CONFIG_DUMP == archive.CONFIG_DUMP


def test_stored_manifests_give_their_string_annotations() -> None:
    annotated = {"schemaVersion": 2, "annotations": {"a": "1", "b": 2}, "layers": []}
    assert manifest_annotations(json.dumps(annotated)) == {"a": "1"}
    assert manifest_annotations(json.dumps({"schemaVersion": 2, "layers": []})) == {}
    assert manifest_annotations('{"Config": "x.json", "Layers": []}') == {}  # a docker save entry
    assert manifest_annotations('["annotations"]') == {}
    assert manifest_annotations('{"annotations": ') == {}
