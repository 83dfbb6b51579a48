"""The test images' busybox root: Debian's dynamically linked busybox with its C library, built reproducibly."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from crishim.images import build as b

from tests.support import testimages as tb


def layer_members(layer: b.LayerBlob) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.data))) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_busybox_is_dynamically_linked_against_the_c_library() -> None:
    names = {lib.name for lib in tb.busybox_libraries()}
    assert "libc.so.6" in names
    assert any(name.startswith("ld-linux") for name in names), names


def test_the_layer_lays_each_library_at_the_path_busybox_loads_it_from() -> None:
    members = layer_members(b.build_layer(tb.busybox_rootfs_layer()))
    for lib in tb.busybox_libraries():
        member = members[str(lib).lstrip("/")]
        assert member.isreg(), member
        assert member.size == lib.resolve().stat().st_size
    for parent in {p for lib in tb.busybox_libraries() for p in lib.parents if str(p) != "/"}:
        assert members[str(parent).lstrip("/")].isdir()


def test_the_same_inputs_build_the_same_layer() -> None:
    first = b.build_layer(tb.busybox_rootfs_layer())
    second = b.build_layer(tb.busybox_rootfs_layer())
    assert first.digest == second.digest


@pytest.mark.root  # chroot
def test_a_bundle_root_with_busybox_runs_its_shell(tmp_path: Path) -> None:
    root = tmp_path / "root"
    tb.install_busybox(root)
    os.link(root / "bin" / "busybox", root / "bin" / "sh")
    ran = subprocess.run(
        ["chroot", str(root), "/bin/sh", "-c", "echo $((6 * 7))"], capture_output=True, text=True, timeout=30
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "42\n", "")


def test_a_static_binary_has_no_libraries(tmp_path: Path) -> None:
    assert tb.shared_libraries(Path("/usr/bin/catatonit")) == []
