"""CRIU's images go to a tmpfs only when the node can spare the memory, and the tmpfs never outlives its stage."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from crishim.oci.mounttable import is_mount_point, mount_points
from crishim.runtime.checkpoint import memstage
from crishim.runtime.checkpoint.stage import clean_stage, discard_stage

MiB = 1 << 20


def test_size_is_half_the_available_memory_when_the_container_fits_a_quarter() -> None:
    assert memstage.tmpfs_size(100 * MiB, 4096 * MiB) == 2048 * MiB
    assert memstage.tmpfs_size(960 * MiB, 4096 * MiB) == 2048 * MiB  # 960 + 64 MiB headroom = a quarter


def test_a_container_too_large_for_the_margin_stages_on_disk() -> None:
    assert memstage.tmpfs_size(961 * MiB, 4096 * MiB) is None
    assert memstage.tmpfs_size(10 * MiB, 0) is None  # MemAvailable unknown


def test_available_memory_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       8000000 kB\nMemFree:         100 kB\nMemAvailable:    2048 kB\n")
    assert memstage.available_memory(meminfo) == 2048 * 1024
    meminfo.write_text("MemTotal: 8 kB\n")
    assert memstage.available_memory(meminfo) == 0
    assert memstage.available_memory(tmp_path / "absent") == 0


def test_resident_bytes_count_the_children_too() -> None:
    child = subprocess.Popen(["sh", "-c", "sleep 600"])
    try:
        own = memstage.resident_bytes(os.getpid())
        alone = memstage.resident_bytes(child.pid)
        assert alone > 0
        assert own > alone  # this process, its child's share included
    finally:
        child.kill()
        child.wait()
    assert memstage.resident_bytes(child.pid) == 0  # gone: nothing to stage


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_images_of_a_small_process_are_staged_on_a_tmpfs_and_released(tmp_path: Path) -> None:
    images = tmp_path / "checkpoint"
    images.mkdir()
    assert memstage.stage_in_memory(images, os.getpid())
    try:
        assert is_mount_point(images)
        (images / "pages-1.img").write_bytes(b"x" * MiB)
        assert oct(images.stat().st_mode & 0o777) == "0o700"
    finally:
        memstage.release(images)
    assert not is_mount_point(images)
    assert not (images / "pages-1.img").exists()
    memstage.release(images)  # twice is fine
    assert not memstage.stage_in_memory(images, 0)  # no process: the disk


def _stage_in_memory(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint stage whose image directory is a tmpfs holding one page image."""
    stage = tmp_path / "bundle" / ".checkpoint-x"
    images = stage / "checkpoint"
    images.mkdir(parents=True)
    assert memstage.stage_in_memory(images, os.getpid())
    (images / "pages-1.img").write_bytes(b"x" * MiB)
    return stage, images


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_stage_left_by_a_killed_daemon_loses_its_tmpfs_before_it_is_removed(tmp_path: Path) -> None:
    stage, images = _stage_in_memory(tmp_path)
    assert clean_stage(stage) == []
    assert not is_mount_point(images)
    assert not stage.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_finished_stage_is_discarded_with_its_tmpfs_behind_the_call(tmp_path: Path) -> None:
    stage, _ = _stage_in_memory(tmp_path)
    discard_stage(stage)
    assert not stage.exists()  # renamed at once
    deadline = time.monotonic() + 10
    while list((tmp_path / "bundle").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list((tmp_path / "bundle").iterdir()) == []
    assert not [m for m in mount_points() if m.startswith(str(tmp_path))]
