"""Image building: tar entries, compression, digests, layouts, indexes, the pause image."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import runpy
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from crishim.images import build as b
from crishim.images.errors import InvalidArgument
from crishim.images.pause import PAUSE_ENTRYPOINT, PAUSE_IMAGE, build_pause_layout, catatonit_version

from tests.support import testimages as tb

ROOT = Path(__file__).resolve().parents[3]


def members(layer: b.LayerBlob) -> dict[str, tarfile.TarInfo]:
    if layer.media_type.endswith("+gzip"):
        raw = gzip.decompress(layer.data)
    elif layer.media_type.endswith("+zstd"):
        raw = bytes(zstandard.ZstdDecompressor().decompressobj().decompress(layer.data))
    else:
        raw = layer.data
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_layer_entries_keep_type_mode_and_owner(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"from host")
    src.chmod(0o750)
    layer = b.build_layer(
        [
            b.directory("d", mode=0o1777, uid=5, gid=6),
            b.regular("d/f", b"abc", mode=0o4755, uid=1000, gid=1001),
            b.host_file("d/h", src),
            b.symlink("d/s", "../etc/passwd"),
            b.hardlink("d/l", "d/f"),
            b.whiteout("etc/gone"),
            b.opaque("var"),
        ]
    )
    m = members(layer)
    assert m["d"].isdir()
    assert m["d"].mode == 0o1777
    assert (m["d"].uid, m["d"].gid) == (5, 6)
    assert m["d/f"].isreg()
    assert m["d/f"].mode == 0o4755
    assert m["d/f"].uid == 1000
    assert m["d/f"].size == 3
    assert m["d/h"].mode == 0o750
    assert m["d/h"].size == len(b"from host")
    assert m["d/s"].issym()
    assert m["d/s"].linkname == "../etc/passwd"
    assert m["d/l"].islnk()
    assert m["d/l"].linkname == "d/f"
    assert "etc/.wh.gone" in m
    assert "var/.wh..wh..opq" in m
    assert all(info.mtime == 0 and info.uname == "" for info in m.values())


@pytest.mark.parametrize(
    ("compression", "media_type"),
    [("gzip", b.OCI_LAYER + "+gzip"), ("zstd", b.OCI_LAYER + "+zstd"), ("none", b.OCI_LAYER)],
)
def test_layer_digest_is_of_blob_and_diff_id_of_tar(compression: b.Compression, media_type: str) -> None:
    entries = [b.regular("x", b"x" * 1000)]
    layer = b.build_layer(entries, compression)
    assert layer.media_type == media_type
    assert layer.digest == "sha256:" + hashlib.sha256(layer.data).hexdigest()
    assert layer.diff_id == b.sha256_digest(b.layer_tar(entries))
    assert members(layer)["x"].size == 1000


def test_same_inputs_give_same_digests() -> None:
    def make() -> b.BuiltImage:
        return b.build_image(
            [tb.busybox_rootfs_layer(), [b.regular("a", b"1")]],
            b.ImageConfig(cmd=("sh",), labels={"b": "2", "a": "1"}),
        )

    first, second = make(), make()
    assert first.digest == second.digest
    assert first.config_digest == second.config_digest
    assert first.diff_ids == second.diff_ids


def test_manifest_references_config_and_layers() -> None:
    config = b.ImageConfig(
        user="1000:1000",
        env=("A=1",),
        entrypoint=("/bin/sh", "-c"),
        cmd=("echo hi",),
        working_dir="/tmp",
        labels={"k": "v"},
        stop_signal="SIGINT",
        exposed_ports=("80", "53/udp"),
        volumes=("/data",),
    )
    image = b.build_image([[b.regular("a", b"1")], [b.whiteout("a")]], config)
    manifest = json.loads(image.manifest)
    assert manifest["mediaType"] == b.OCI_MANIFEST
    assert manifest["config"] == {
        "mediaType": b.OCI_CONFIG,
        "digest": image.config_digest,
        "size": len(image.config),
    }
    assert [layer["digest"] for layer in manifest["layers"]] == [layer.digest for layer in image.layers]
    doc = json.loads(image.config)
    assert doc["rootfs"] == {"type": "layers", "diff_ids": image.diff_ids}
    assert (doc["os"], doc["architecture"]) == ("linux", "amd64")
    assert doc["config"] == {
        "User": "1000:1000",
        "Env": ["A=1"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "WorkingDir": "/tmp",
        "Labels": {"k": "v"},
        "StopSignal": "SIGINT",
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "Volumes": {"/data": {}},
    }


def test_docker_media_types_and_no_zstd() -> None:
    image = b.build_image([[b.regular("a")]], docker=True)
    manifest = json.loads(image.manifest)
    assert manifest["mediaType"] == b.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == b.DOCKER_CONFIG
    assert manifest["layers"][0]["mediaType"] == b.DOCKER_LAYER + ".gzip"
    with pytest.raises(InvalidArgument, match="zstd"):
        b.build_image([[b.regular("a")]], docker=True, compression="zstd")


def test_index_lists_each_platform() -> None:
    amd = b.build_image([[b.regular("a")]])
    arm = b.build_image([[b.regular("a")]], platform=b.Platform("linux", "arm64", "v8"))
    index = b.build_index([amd, arm])
    doc = json.loads(index.manifest)
    assert doc["mediaType"] == b.OCI_INDEX
    assert [m["platform"] for m in doc["manifests"]] == [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
    ]
    assert {amd.digest, arm.digest, index.digest} <= set(index.blobs())
    docker_index = b.build_index([b.build_image([[b.regular("a")]], docker=True)], docker=True)
    assert json.loads(docker_index.manifest)["mediaType"] == b.DOCKER_LIST
    with pytest.raises(InvalidArgument):
        b.build_index([amd], docker=True)


def test_artifact_has_minimal_config() -> None:
    art = tb.build_artifact([[b.regular("data/file", b"payload")]])
    doc = json.loads(art.config)
    assert doc["config"] == {}
    assert "history" not in doc
    assert len(doc["rootfs"]["diff_ids"]) == 1


def test_bad_paths_are_rejected() -> None:
    for bad in ("", "/", "a/../b", "./a"):
        with pytest.raises(InvalidArgument):
            b.regular(bad)


def verify_layout(layout: Path) -> dict[str, object]:
    """Every blob named in the layout exists and has its digest and size."""
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())

    def check(desc: dict[str, object]) -> bytes:
        data = (layout / "blobs" / str(desc["digest"]).replace(":", "/")).read_bytes()
        assert b.sha256_digest(data) == desc["digest"]
        assert len(data) == desc["size"]
        return data

    for desc in index["manifests"]:
        doc = json.loads(check(desc))
        children = doc.get("manifests", [])
        for child in children:
            child_doc = json.loads(check(child))
            for blob in [child_doc["config"], *child_doc["layers"]]:
                check(blob)
        if not children:
            for blob in [doc["config"], *doc["layers"]]:
                check(blob)
    return dict(index)


def test_layout_directory_and_tar_hold_every_blob(tmp_path: Path) -> None:
    image = b.build_image([[b.regular("a", b"1")]], b.ImageConfig(cmd=("sh",)))
    index = b.build_index([image, b.build_image([[b.regular("a")]], platform=b.Platform("linux", "arm64"))])
    refs: dict[str, b.Built] = {"example.com/one:v1": image, "two": index}
    top = verify_layout(b.write_layout(tmp_path / "layout", refs))
    manifests = top["manifests"]
    assert isinstance(manifests, list)
    assert manifests[0]["annotations"] == {
        b.REF_NAME_ANNOTATION: "v1",
        b.IMAGE_NAME_ANNOTATION: "example.com/one:v1",
    }
    assert manifests[1]["mediaType"] == b.OCI_INDEX
    tar_path = tb.write_layout_tar(tmp_path / "layout.tar", refs)
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path / "untarred", filter="data")
    verify_layout(tmp_path / "untarred")
    assert (tmp_path / "untarred" / "index.json").read_bytes() == (tmp_path / "layout/index.json").read_bytes()


def test_busybox_layer_has_applets_accounts_and_dirs() -> None:
    layer = b.build_layer(tb.busybox_rootfs_layer())
    m = members(layer)
    assert m["bin/busybox"].isreg()
    assert m["bin/busybox"].mode == 0o755
    assert m["bin/sh"].islnk()  # hard links, so masking one applet never masks busybox
    assert m["bin/sh"].linkname == "bin/busybox"
    applets = subprocess.run(["/usr/bin/busybox", "--list"], capture_output=True, text=True).stdout.split()
    assert all(f"bin/{name}" in m for name in applets if name != "busybox")
    assert m["tmp"].mode == 0o1777
    for path in ("dev", "proc", "sys", "etc/hosts", "etc/resolv.conf"):
        assert path in m
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.data))) as tar:
        member = tar.extractfile("etc/passwd")
        assert member is not None
        passwd = member.read().decode()
    names = {line.split(":")[0]: line.split(":")[2] for line in passwd.splitlines()}
    assert names["root"] == "0"
    assert names["nobody"] == "65534"
    assert names["www-data"] == "33"


def test_pause_layout_is_valid_and_holds_catatonit(tmp_path: Path) -> None:
    layout = build_pause_layout(tmp_path / "pause")
    index = verify_layout(layout)
    manifests = index["manifests"]
    assert isinstance(manifests, list)
    assert len(manifests) == 1
    assert manifests[0]["annotations"][b.IMAGE_NAME_ANNOTATION] == PAUSE_IMAGE
    assert PAUSE_IMAGE == f"localhost/crishim/pause:{catatonit_version()}"
    assert catatonit_version()[0].isdigit()
    manifest = json.loads((layout / "blobs" / manifests[0]["digest"].replace(":", "/")).read_bytes())
    config = json.loads((layout / "blobs" / manifest["config"]["digest"].replace(":", "/")).read_bytes())
    assert config["config"]["Entrypoint"] == list(PAUSE_ENTRYPOINT)
    (layer_desc,) = manifest["layers"]
    raw = gzip.decompress((layout / "blobs" / layer_desc["digest"].replace(":", "/")).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        info = tar.getmember("catatonit")
        assert info.isreg()
        assert info.mode & stat.S_IXUSR
        member = tar.extractfile(info)
        assert member is not None
        assert member.read() == Path("/usr/bin/catatonit").read_bytes()


def test_effective_uid_program_prints_its_euid(tmp_path: Path) -> None:
    elf = runpy.run_path(str(ROOT / "scripts" / "build-test-images"))["effective_uid_elf"]()
    prog = tmp_path / "nnp"
    prog.write_bytes(elf)
    prog.chmod(0o755)
    import os

    out = subprocess.run([str(prog)], capture_output=True, check=True).stdout
    assert out == f"Effective uid: {os.geteuid()}\n".encode()


def test_a_hard_links_header_carries_its_targets_mode_and_owner() -> None:
    """Some appliers (containerd's) chmod the shared inode to the link's header mode."""
    raw = b.layer_tar(
        [b.regular("bin/busybox", b"\x7fELF", mode=0o755, uid=3, gid=4), b.hardlink("bin/sh", "bin/busybox")]
    )
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        link = tar.getmember("bin/sh")
    assert link.islnk()
    assert link.linkname == "bin/busybox"
    assert (link.mode, link.uid, link.gid) == (0o755, 3, 4)
