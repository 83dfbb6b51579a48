"""Two users of one image store (the daemon and `crishim pull` or `crishim images prefetch`):
the second must not sweep the first's work in progress as if a crash had left it."""

from __future__ import annotations

from pathlib import Path

from crishim.images.store import ImageStore


def work_in_progress(store: ImageStore) -> list[Path]:
    download = store.content.tmp / "layer-in-progress"
    download.mkdir()
    layer = store.layers_dir / ("ab" * 32)  # renamed into place, not yet recorded
    layer.mkdir()
    return [download, layer]


def test_a_second_user_leaves_the_first_ones_files_alone(tmp_path: Path) -> None:
    daemon = ImageStore(tmp_path / "images", None)
    try:
        files = work_in_progress(daemon)
        ImageStore(tmp_path / "images", None).close()
        assert all(f.exists() for f in files)
    finally:
        daemon.close()


def test_the_only_user_recovers_what_a_crash_left(tmp_path: Path) -> None:
    crashed = ImageStore(tmp_path / "images", None)
    files = work_in_progress(crashed)
    crashed.close()  # as a crash would: the lock goes with the process, the files stay
    ImageStore(tmp_path / "images", None).close()
    assert not any(f.exists() for f in files)
