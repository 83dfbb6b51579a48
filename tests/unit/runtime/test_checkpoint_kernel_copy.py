"""Tar members copied by the kernel: the same archive bytes as tarfile's, the same files out, cut archives refused."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
from crishim.runtime.checkpoint import kernel_copy
from crishim.runtime.checkpoint.kernel_copy import KernelCopyTar

# Sizes around the 512-byte blocks: empty, a part block, exactly one, more than 1 MiB.
SIZES = {"empty": 0, "part": 1000, "block": 512, "big": (1 << 20) + 7}


def _tree(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    for name, size in SIZES.items():
        (root / "images" / f"{name}.img").write_bytes(os.urandom(size))
        os.utime(root / "images" / f"{name}.img", (1_700_000_000, 1_700_000_000))
    os.utime(root / "images", (1_700_000_000, 1_700_000_000))
    return root / "images"


def _write(cls: type[tarfile.TarFile], tree: Path, out: Path) -> bytes:
    with open(out, "wb") as fh, cls.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("meta.json"), io.BytesIO(b""))
        info = tarfile.TarInfo("config.dump")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"{}\n"))
        tar.add(tree, arcname="checkpoint")
    return out.read_bytes()


def test_written_archive_is_byte_for_byte_tarfiles(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "src")
    ours = _write(KernelCopyTar, tree, tmp_path / "ours.tar")
    theirs = _write(tarfile.TarFile, tree, tmp_path / "theirs.tar")
    assert ours == theirs


def test_extracted_files_hold_the_members_bytes(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "src")
    _write(KernelCopyTar, tree, tmp_path / "a.tar")
    dest = tmp_path / "out"
    with KernelCopyTar.open(tmp_path / "a.tar", "r:*") as tar:
        for member in tar:
            tar.extract(member, dest)
    for name in SIZES:
        assert (dest / "checkpoint" / f"{name}.img").read_bytes() == (tree / f"{name}.img").read_bytes()
    assert (dest / "config.dump").read_bytes() == b"{}\n"


def test_a_cut_archive_is_refused_as_tarfile_refuses_it(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "src")
    whole = _write(KernelCopyTar, tree, tmp_path / "a.tar")
    cut = tmp_path / "cut.tar"
    with tarfile.open(tmp_path / "a.tar") as tar:
        big = tar.getmember("checkpoint/big.img")
    cut.write_bytes(whole[: big.offset_data + 1000])  # inside the big member's data
    with KernelCopyTar.open(cut, "r:") as tar, pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        tar.extractall(tmp_path / "out")


def test_a_compressed_archive_takes_tarfiles_own_path(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "src")
    packed = tmp_path / "a.tar.gz"
    packed.write_bytes(gzip.compress(_write(KernelCopyTar, tree, tmp_path / "a.tar")))
    with KernelCopyTar.open(packed, "r:*") as tar:
        assert kernel_copy._fd(tar.fileobj) is None  # a decompressor, never its file's descriptor
        tar.extractall(tmp_path / "out")
    assert (tmp_path / "out" / "checkpoint" / "big.img").read_bytes() == (tree / "big.img").read_bytes()


def test_copy_range_copies_from_an_offset_and_stops_at_the_end(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"0123456789")
    with open(src, "rb") as s, open(dst, "wb") as d:
        assert kernel_copy.copy_range(s.fileno(), 4, d.fileno(), 100) == 6
    assert dst.read_bytes() == b"456789"
