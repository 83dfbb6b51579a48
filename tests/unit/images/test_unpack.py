from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from crishim.images.errors import DataLoss, InvalidArgument, LayerEscape, UnpackAborted
from crishim.images.unpack import chain_ids, unpack_layer


def make_tar(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        add(tf)
    return buf.getvalue()


def add_file(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tf.addfile(info, io.BytesIO(data))


def add_entry(tf: tarfile.TarFile, name: str, kind: bytes, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    tf.addfile(info)


def feed(data: bytes, chunk: int = 7000) -> Callable[[], bytes | None]:
    parts = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    parts.reverse()
    return lambda: parts.pop() if parts else None


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sample(tf: tarfile.TarFile) -> None:
    add_entry(tf, "etc", tarfile.DIRTYPE, mode=0o755, mtime=1000)
    add_file(tf, "etc/passwd", b"root:x:0:0::/:/bin/sh\n", mode=0o600, uid=12, gid=34, mtime=2000)
    add_entry(tf, "etc/link", tarfile.SYMTYPE, linkname="/etc/passwd")
    add_entry(tf, "etc/hard", tarfile.LNKTYPE, linkname="etc/passwd")
    add_file(tf, "big", os.urandom(3 << 20), mode=0o4755)


@pytest.mark.parametrize("compression", ["tar", "gzip", "zstd"])
def test_layers_unpack_with_metadata_and_both_digests_checked(tmp_path: Path, compression: str) -> None:
    raw = make_tar(sample)
    blob = {"tar": raw, "gzip": gzip.compress(raw), "zstd": zstandard.ZstdCompressor().compress(raw)}[compression]
    result = unpack_layer(
        feed(blob), tmp_path, where="test", expected_digest=digest(blob), expected_diff_id=digest(raw)
    )
    assert result.compression == compression
    assert result.diff_id == digest(raw)
    passwd = tmp_path / "etc/passwd"
    st = passwd.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_mtime == 2000
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (12, 34)
        assert stat.S_IMODE((tmp_path / "big").stat().st_mode) == 0o4755
    assert os.readlink(tmp_path / "etc/link") == "/etc/passwd"
    assert (tmp_path / "etc/hard").stat().st_ino == st.st_ino
    assert (tmp_path / "etc").stat().st_mtime == 1000


def test_multi_member_gzip_is_read_to_the_end(tmp_path: Path) -> None:
    raw = make_tar(sample)
    blob = gzip.compress(raw[:5000]) + gzip.compress(raw[5000:])
    result = unpack_layer(feed(blob), tmp_path, where="test", expected_diff_id=digest(raw))
    assert (tmp_path / "big").stat().st_size == 3 << 20
    assert result.digest == digest(blob)


def test_wrong_blob_digest_is_data_loss(tmp_path: Path) -> None:
    raw = make_tar(sample)
    with pytest.raises(DataLoss, match="digest mismatch"):
        unpack_layer(feed(raw), tmp_path, where="test", expected_digest="sha256:" + "0" * 64)


def test_wrong_diff_id_is_data_loss(tmp_path: Path) -> None:
    blob = gzip.compress(make_tar(sample))
    with pytest.raises(DataLoss, match="diff ID"):
        unpack_layer(feed(blob), tmp_path, where="test", expected_diff_id="sha256:" + "0" * 64)


def test_truncated_gzip_is_data_loss(tmp_path: Path) -> None:
    blob = gzip.compress(make_tar(sample))
    with pytest.raises(DataLoss, match="truncated"):
        unpack_layer(feed(blob[: len(blob) // 2]), tmp_path, where="test")


def test_corrupt_gzip_is_data_loss(tmp_path: Path) -> None:
    blob = bytearray(gzip.compress(make_tar(sample)))
    blob[200:260] = b"\xff" * 60
    with pytest.raises(DataLoss):
        unpack_layer(feed(bytes(blob)), tmp_path, where="test")


def write_through_symlink(tf: tarfile.TarFile) -> None:
    add_entry(tf, "out", tarfile.SYMTYPE, linkname="/tmp")
    add_file(tf, "out/evil", b"x")


def hardlink_outside(tf: tarfile.TarFile) -> None:
    add_file(tf, "f", b"x")
    add_entry(tf, "h", tarfile.LNKTYPE, linkname="../../etc/passwd")


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda tf: add_file(tf, "../evil", b"x"), r"\.\."),
        (lambda tf: add_file(tf, "a/../../evil", b"x"), r"\.\."),
        (lambda tf: add_file(tf, "/etc/evil", b"x"), "absolute"),
        (lambda tf: write_through_symlink(tf), "symlink"),
        (lambda tf: hardlink_outside(tf), r"\.\."),
    ],
)
def test_entries_escaping_the_layer_are_refused(
    tmp_path: Path, build: Callable[[tarfile.TarFile], None], match: str
) -> None:
    dest = tmp_path / "layer"
    dest.mkdir()
    with pytest.raises(LayerEscape, match=match):
        unpack_layer(feed(make_tar(build)), dest, where="test")
    assert not (tmp_path / "evil").exists()


@pytest.mark.root
def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    def build(tf: tarfile.TarFile) -> None:
        add_entry(tf, "dir", tarfile.DIRTYPE, mode=0o755)
        add_file(tf, "dir/.wh..wh..opq")
        add_file(tf, "dir/new", b"new")
        add_file(tf, ".wh.gone")
        add_entry(tf, "dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)

    unpack_layer(feed(make_tar(build)), tmp_path, where="test")
    gone = tmp_path / "gone"
    st = gone.lstat()
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(tmp_path / "dir", "trusted.overlay.opaque") == b"y"
    assert not (tmp_path / "dir/.wh..wh..opq").exists()
    assert (tmp_path / "dev/null").lstat().st_rdev == os.makedev(1, 3)


def test_a_truncated_tar_is_data_loss(tmp_path: Path) -> None:
    raw = make_tar(sample)
    with pytest.raises((DataLoss, InvalidArgument)):
        unpack_layer(feed(raw[:4096]), tmp_path, where="test")


def test_chain_ids_follow_the_oci_formula() -> None:
    a, b = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    chains = chain_ids([a, b])
    assert chains[0] == a
    assert chains[1] == digest(f"{a} {b}".encode())


def long_names_and_contents(tf: tarfile.TarFile) -> None:
    add_file(tf, "d/" + "n" * 150, b"long pax name\n" * 100)
    add_file(tf, "d/empty", b"")
    add_file(tf, "d/odd", os.urandom(512 * 3 + 1))
    add_file(tf, "d/big", os.urandom((1 << 20) + 12345))


def short_long_name(tf: tarfile.TarFile) -> None:
    add_file(tf, "p/" + "q" * 120, b"x" * 700)
    add_file(tf, "small", b"s" * 3000)


@pytest.mark.parametrize("chunk", [1, 511, 513, 65536])
@pytest.mark.parametrize("compression", ["tar", "gzip"])
def test_file_contents_survive_any_chunking(tmp_path: Path, compression: str, chunk: int) -> None:
    """File data is written straight from the stream's buffer: every byte must land, in order,
    whatever sizes the download arrives in (headers and contents straddling chunks)."""
    if chunk == 1:  # one-byte chunks: a short tar keeps the test quick
        raw = make_tar(short_long_name)
    else:
        raw = make_tar(long_names_and_contents)
    blob = gzip.compress(raw) if compression == "gzip" else raw
    unpack_layer(feed(blob, chunk), tmp_path, where="test", expected_diff_id=digest(raw))
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        for member in tf:
            if member.isreg():
                source = tf.extractfile(member)
                assert source is not None
                assert (tmp_path / member.name).read_bytes() == source.read(), member.name


def test_gnu_sparse_members_are_written_with_their_holes(tmp_path: Path) -> None:
    """Sparse members keep going through tarfile's reader, which fills the holes in."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(1 << 20)
        f.write(b"tail")
    raw = subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-cf", "-", "-C", str(src), "sparse"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        assert tf.getmember("sparse").issparse()
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_layer(feed(gzip.compress(raw)), dest, where="test", expected_diff_id=digest(raw))
    data = (dest / "sparse").read_bytes()
    assert data == b"head" + b"\0" * ((1 << 20) - 4) + b"tail"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_stop_ends_the_unpack_even_when_the_compressed_stream_is_already_read(
    tmp_path: Path, compression: str
) -> None:
    """64 MiB of zeros compress to a few chunks, all read before most of it is inflated: the
    stop must still end the unpack between inflate steps, not after the last file."""

    def zeros(tf: tarfile.TarFile) -> None:
        for i in range(64):
            add_file(tf, f"f{i:02d}", bytes(1 << 20))

    raw = make_tar(zeros)
    blob = gzip.compress(raw) if compression == "gzip" else zstandard.ZstdCompressor().compress(raw)
    chunks = feed(blob, chunk=1 << 20)
    asked = 0

    def stopped() -> bool:
        nonlocal asked
        asked += 1
        return asked > 4  # a few inflate steps in, long after every chunk was read

    with pytest.raises(UnpackAborted):
        unpack_layer(chunks, tmp_path, where="test", stopped=stopped)
    assert chunks() is None, "the whole compressed stream was read before the stop"
    written = sum(1 for _ in tmp_path.iterdir())
    assert 0 < written < 16, f"{written} of 64 files were unpacked after the stop"


def test_truncated_zstd_is_data_loss(tmp_path: Path) -> None:
    blob = zstandard.ZstdCompressor().compress(make_tar(sample))
    with pytest.raises(DataLoss):
        unpack_layer(feed(blob[: len(blob) // 2]), tmp_path, where="test")


def test_zstd_frames_inflate_in_bounded_steps(tmp_path: Path) -> None:
    """A 64 MiB file of zeros is a few KB of zstd: one step must still yield at most 1 MiB."""

    def zeros(tf: tarfile.TarFile) -> None:
        add_file(tf, "zeros", bytes(64 << 20))
        add_file(tf, "tail", b"after the second frame")

    raw = make_tar(zeros)
    half = len(raw) // 2
    blob = zstandard.ZstdCompressor().compress(raw[:half]) + zstandard.ZstdCompressor().compress(raw[half:])
    steps = 0

    def stopped() -> bool:  # asked once before each inflate step
        nonlocal steps
        steps += 1
        return False

    result = unpack_layer(feed(blob), tmp_path, where="test", expected_diff_id=digest(raw), stopped=stopped)
    assert result.diff_id == digest(raw)
    assert (tmp_path / "zeros").stat().st_size == 64 << 20
    assert (tmp_path / "tail").read_bytes() == b"after the second frame"
    assert steps >= 64, f"64 MiB came out of {steps} inflate steps: more than 1 MiB a step"
