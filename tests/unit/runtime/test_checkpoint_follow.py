"""The page image copied into the archive while CRIU writes it (runtime/checkpoint/follow.py).

A thread here plays CRIU: it appends to `pages-1.img` in chunks, with pauses, while the
follower copies. The archive that results must read, member for member and byte for byte,
as one written after the dump would: with Python's tarfile, with GNU tar, and through the
restore's own unpack_archive.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest
from crishim.runtime.checkpoint import archive, follow
from crishim.runtime.checkpoint.follow import PageFollower

CHUNK = 256 * 1024 + 100  # not a multiple of a tar block, so the member ends mid-block


def _stage(tmp_path: Path) -> Path:
    images = tmp_path / "stage" / "checkpoint"
    images.mkdir(parents=True)
    (images / "inventory.img").write_bytes(b"\x01" * 64)
    (images / "pagemap-1.img").write_bytes(b"\x02" * 300)
    return images


def _criu_writes(path: Path, chunks: int, started: threading.Event) -> bytes:
    """Appends `chunks` distinct chunks to `path`, pausing between them; returns all it wrote."""
    written = bytearray()
    with open(path, "ab") as out:
        for i in range(chunks):
            chunk = bytes([i % 251]) * CHUNK
            out.write(chunk)
            out.flush()
            written += chunk
            started.set()
            time.sleep(0.02)
    return bytes(written)


def _members(images: Path) -> list[archive.Member]:
    return [
        archive.Member(archive.CHECKPOINT_DIRECTORY, path=images),
        archive.Member(archive.CONFIG_DUMP, data=b'{"id": "c1"}'),
        archive.Member(archive.SPEC_DUMP, data=b'{"ociVersion": "1.0.2"}'),
        archive.Member(archive.DELETED_FILES, data=archive.deleted_files([])),
    ]


def _following(tmp_path: Path) -> tuple[Path, Path, Path, PageFollower]:
    """A stage's images, the archive's location and partial file, and a follower started on them."""
    images = _stage(tmp_path)
    location = tmp_path / "c.tar"
    partial = archive.partial_path(location, "stage")
    follower = PageFollower(images, partial, threading.Event())
    follower.start()
    return images, location, partial, follower


def _followed_archive(tmp_path: Path, chunks: int = 12) -> tuple[Path, bytes, follow.Followed | None]:
    images, location, partial, follower = _following(tmp_path)
    started = threading.Event()
    result: list[bytes] = []
    writer = threading.Thread(target=lambda: result.append(_criu_writes(images / "pages-1.img", chunks, started)))
    writer.start()
    started.wait(5)
    time.sleep(0.05)
    copied_while_writing = partial.exists() and partial.stat().st_size > 0
    writer.join()
    followed = follower.finish()
    archive.write_archive(location, _members(images), threading.Event(), partial, followed)
    assert copied_while_writing, "nothing was copied while the page image was being written"
    return location, result[0], followed


def test_a_followed_page_image_reads_back_as_if_written_after_the_dump(tmp_path: Path) -> None:
    location, written, followed = _followed_archive(tmp_path)
    assert followed is not None
    assert followed.size == len(written)
    with tarfile.open(location) as tar:
        names = tar.getnames()
        assert names.count("checkpoint/pages-1.img") == 1
        assert {"checkpoint", "checkpoint/inventory.img", "checkpoint/pagemap-1.img", "config.dump"} <= set(names)
        pages = tar.getmember("checkpoint/pages-1.img")
        assert (pages.size, pages.uname, pages.mode & 0o777) == (len(written), "", 0o644)
        assert tar.extractfile(pages).read() == written  # type: ignore[union-attr]
        assert tar.extractfile("checkpoint/pagemap-1.img").read() == b"\x02" * 300  # type: ignore[union-attr]
    assert not archive.partial_path(location, "stage").exists()


def test_gnu_tar_and_the_restore_read_a_followed_archive(tmp_path: Path) -> None:
    location, written, _ = _followed_archive(tmp_path, chunks=5)
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(location), "-C", str(out)], check=True, capture_output=True)
    assert (out / "checkpoint" / "pages-1.img").read_bytes() == written
    dest = tmp_path / "dest"
    dest.mkdir()
    unpacked = archive.unpack_archive(location, dest, threading.Event())
    assert unpacked.config == {"id": "c1"}
    assert (dest / "checkpoint" / "pages-1.img").read_bytes() == written
    assert (dest / "checkpoint" / "inventory.img").read_bytes() == b"\x01" * 64


def test_without_a_page_image_the_archive_is_written_as_before(tmp_path: Path) -> None:
    images, location, partial, follower = _following(tmp_path)
    assert follower.finish() is None
    assert not partial.exists()
    archive.write_archive(location, _members(images), threading.Event(), partial, None)
    with tarfile.open(location) as tar:
        assert "checkpoint/inventory.img" in tar.getnames()


def test_a_page_image_that_appears_late_is_archived_whole(tmp_path: Path) -> None:
    """Written in one go just before CRIU exits, between two of the follower's looks."""
    images, location, partial, follower = _following(tmp_path)
    data = os.urandom(3 * CHUNK)
    (images / "pages-1.img").write_bytes(data)
    followed = follower.finish()
    archive.write_archive(location, _members(images), threading.Event(), partial, followed)
    with tarfile.open(location) as tar:
        assert tar.extractfile("checkpoint/pages-1.img").read() == data  # type: ignore[union-attr]
        assert tar.getnames().count("checkpoint/pages-1.img") == 1


def test_a_stopped_follower_leaves_its_partial_file_for_the_caller(tmp_path: Path) -> None:
    images, _, partial, follower = _following(tmp_path)
    (images / "pages-1.img").write_bytes(b"\x03" * CHUNK)
    deadline = time.monotonic() + 5
    while not (partial.exists() and partial.stat().st_size >= follow.HEADER_ROOM + CHUNK):
        assert time.monotonic() < deadline, "the follower copied nothing"
        time.sleep(0.01)
    follower.stop()
    follower.stop()  # idempotent
    assert partial.exists()
    assert not [fd for fd in os.listdir("/proc/self/fd") if _names(fd, partial)], "a descriptor was left open"


def _names(fd: str, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") in (str(path), str(path.parent / "stage" / "checkpoint/pages-1.img"))
    except OSError:
        return False


@pytest.mark.parametrize("name", ["checkpoint/pages-1.img", "checkpoint/" + "x" * 200 + "/pages-12345.img"])
def test_the_header_fills_its_room_exactly_and_names_the_member(name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = 123457, 0o600, 1_700_000_000
    header = follow.header_of_length(info, follow.HEADER_ROOM, "utf-8", "surrogateescape")
    assert len(header) == follow.HEADER_ROOM
    with tarfile.open(fileobj=io.BytesIO(header + b"\0" * (123457 + 511 + 1024)), mode="r:") as tar:
        member = tar.next()
        assert member is not None
        assert (member.name, member.size, member.mode) == (name, 123457, 0o600)
        assert member.offset_data == follow.HEADER_ROOM
