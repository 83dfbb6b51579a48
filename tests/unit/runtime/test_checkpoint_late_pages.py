"""The page images copied behind CreateContainer, and the hook that holds CRIU for them (late_pages.py).

The archives are real tars written by archive.write_archive; the hook is run as runc runs
it (its path and arguments, flock(1) of this machine); the lock is the kernel's.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from crishim.runtime.checkpoint import archive, late_pages

BIG = late_pages.MIN_BYTES + 12345  # not a multiple of a tar block
pytestmark = pytest.mark.skipif(late_pages.tools() is None, reason="flock(1) is not installed here")


def _pattern(size: int, seed: int) -> bytes:
    block = bytes((seed + i) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def _archive(tmp_path: Path, pages: dict[str, int]) -> tuple[Path, dict[str, bytes]]:
    """A checkpoint archive whose images are `pages` (name -> size) beside CRIU's small images."""
    images = tmp_path / "dump" / "checkpoint"
    images.mkdir(parents=True)
    (images / "inventory.img").write_bytes(b"\x01" * 64)
    (images / "pagemap-1.img").write_bytes(b"\x02" * 300)
    contents = {}
    for i, (name, size) in enumerate(pages.items()):
        contents[name] = _pattern(size, i)
        (images / name).write_bytes(contents[name])
    location = tmp_path / "c.tar"
    members = [
        archive.Member(archive.CHECKPOINT_DIRECTORY, path=images),
        archive.Member(archive.CONFIG_DUMP, data=b'{"id": "c1"}'),
        archive.Member(archive.SPEC_DUMP, data=b'{"ociVersion": "1.0.2"}'),
    ]
    archive.write_archive(location, members, threading.Event())
    return location, contents


def _unpacked(tmp_path: Path, location: Path) -> tuple[archive.Unpacked, Path]:
    """The archive unpacked as a restore's create does, and a bundle holding its images."""
    stage = tmp_path / "stage"
    stage.mkdir()
    unpacked = archive.unpack_archive(location, stage, threading.Event(), late_pages.is_late)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    os.rename(stage / archive.CHECKPOINT_DIRECTORY, bundle / archive.CHECKPOINT_DIRECTORY)
    return unpacked, bundle


def _hook_command(bundle: Path, wait: int | None = None) -> list[str]:
    """The hook as runc runs it: its path, then its arguments after the first."""
    hook = late_pages.hook(bundle, late_pages.tools() or ("", ""))
    args = list(hook["args"][1:])
    if wait is not None:
        args[args.index("--wait") + 1] = str(wait)
    return [hook["path"], *args]


def test_large_page_images_stay_in_the_archive_and_the_rest_is_unpacked(tmp_path: Path) -> None:
    location, contents = _archive(tmp_path, {"pages-1.img": BIG, "pages-2.img": 5000})
    unpacked, bundle = _unpacked(tmp_path, location)
    images = bundle / archive.CHECKPOINT_DIRECTORY
    assert [m.name for m in unpacked.late] == ["checkpoint/pages-1.img"]
    assert not (images / "pages-1.img").exists()
    assert (images / "pages-2.img").read_bytes() == contents["pages-2.img"]  # small: unpacked with the rest
    assert (images / "pagemap-1.img").read_bytes() == b"\x02" * 300
    member = unpacked.late[0]
    with open(location, "rb") as raw:
        raw.seek(member.offset_data)
        assert raw.read(member.size) == contents["pages-1.img"]


def test_the_copy_puts_each_image_whole_under_its_name_and_lets_the_hook_pass(tmp_path: Path) -> None:
    location, contents = _archive(tmp_path, {"pages-1.img": BIG, "pages-2.img": BIG + 1})
    unpacked, bundle = _unpacked(tmp_path, location)
    images = bundle / archive.CHECKPOINT_DIRECTORY
    copy = late_pages.start(location, unpacked.late, images, bundle)
    # Whenever the hook passes, every image is there and whole: CRIU never reads a part.
    subprocess.run(_hook_command(bundle), check=True, timeout=60)
    for name, data in contents.items():
        assert (images / name).read_bytes() == data
    assert copy.done.wait(10)
    assert not list(images.glob("*" + late_pages.PARTIAL_SUFFIX))
    assert not (bundle / late_pages.PENDING_FILE).exists()
    assert late_pages.failure(bundle) is None
    assert not late_pages.interrupted(bundle)


def test_the_hook_waits_while_the_lock_is_held(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    fd = os.open(bundle / late_pages.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the copy holds it
        hook = subprocess.Popen(_hook_command(bundle))
        time.sleep(0.5)
        assert hook.poll() is None, "the hook passed a held lock"
    finally:
        os.close(fd)
    assert hook.wait(timeout=10) == 0


def test_the_hook_gives_up_after_its_wait(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    fd = os.open(bundle / late_pages.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = subprocess.run(_hook_command(bundle, wait=1), timeout=30)
    finally:
        os.close(fd)
    assert result.returncode != 0  # runc then fails the restore: CRIU never reads a part


def test_an_archive_cut_inside_a_late_image_is_refused(tmp_path: Path) -> None:
    location, _ = _archive(tmp_path, {"pages-1.img": BIG})
    with open(location, "r+b") as raw:
        raw.truncate(4096 + BIG // 2)  # inside the page image, the only large member
    stage = tmp_path / "stage"
    stage.mkdir()
    with pytest.raises(archive.CorruptArchive, match="truncated"):
        archive.unpack_archive(location, stage, threading.Event(), late_pages.is_late)
    assert not list(stage.iterdir())


def test_a_failed_copy_leaves_no_image_and_says_why(tmp_path: Path) -> None:
    location, _ = _archive(tmp_path, {"pages-1.img": BIG})
    unpacked, bundle = _unpacked(tmp_path, location)
    images = bundle / archive.CHECKPOINT_DIRECTORY
    with open(location, "r+b") as raw:
        raw.truncate(4096 + BIG // 2)  # cut after the create checked it
    copy = late_pages.start(location, unpacked.late, images, bundle)
    assert copy.done.wait(30)
    error = late_pages.failure(bundle)
    assert error is not None
    assert "pages-1.img" in error
    assert "truncated" in error
    assert not (images / "pages-1.img").exists()
    assert not list(images.glob("*" + late_pages.PARTIAL_SUFFIX))
    subprocess.run(_hook_command(bundle, wait=5), check=True, timeout=30)  # the lock is let go
    late_pages.cancel(bundle)  # as RemoveContainer does
    assert late_pages.failure(bundle) is None


def test_cancel_stops_the_copy_and_closes_its_files(tmp_path: Path) -> None:
    location, _ = _archive(tmp_path, {"pages-1.img": BIG})
    unpacked, bundle = _unpacked(tmp_path, location)
    images = bundle / archive.CHECKPOINT_DIRECTORY
    before = set(os.listdir("/proc/self/fd"))
    copy = late_pages.start(location, unpacked.late, images, bundle)
    late_pages.cancel(bundle)
    assert copy.done.is_set()
    assert not list(images.glob("*" + late_pages.PARTIAL_SUFFIX))
    assert set(os.listdir("/proc/self/fd")) <= before  # the archive and the lock closed
    subprocess.run(_hook_command(bundle, wait=5), check=True, timeout=30)


def test_a_copy_no_daemon_runs_any_more_is_interrupted(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert not late_pages.interrupted(bundle)
    (bundle / late_pages.PENDING_FILE).write_text("checkpoint/pages-1.img\n")  # as a killed daemon leaves it
    assert late_pages.interrupted(bundle)


def test_the_hook_goes_first_and_is_dropped_alone(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    plugin_hook = {"path": "/usr/local/bin/plugin-hook", "args": ["plugin-hook"]}
    spec: dict[str, Any] = {"ociVersion": "1.0.2", "hooks": {"createRuntime": [plugin_hook]}}
    late_pages.with_hook(spec, bundle, late_pages.tools() or ("", ""))
    assert spec["hooks"]["createRuntime"][0]["path"].endswith("flock")
    assert spec["hooks"]["createRuntime"][1] == plugin_hook
    (bundle / "config.json").write_text(json.dumps(spec))
    late_pages.drop_hook(bundle)
    assert json.loads((bundle / "config.json").read_text())["hooks"] == {"createRuntime": [plugin_hook]}

    alone: dict[str, Any] = {"ociVersion": "1.0.2"}
    late_pages.with_hook(alone, bundle, late_pages.tools() or ("", ""))
    (bundle / "config.json").write_text(json.dumps(alone))
    late_pages.drop_hook(bundle)
    assert json.loads((bundle / "config.json").read_text()) == {"ociVersion": "1.0.2"}
