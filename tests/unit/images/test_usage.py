"""Disk usage of a tree: what ImageFsInfo and a container's writable-layer stats report."""

from __future__ import annotations

import os
from pathlib import Path

from crishim.images.usage import tree_usage


def test_tree_usage_counts_inodes_once_and_never_follows_symlinks(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d/f").write_bytes(os.urandom(64 * 1024))
    os.link(upper / "d/f", upper / "hard")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(os.urandom(1 << 20))
    (upper / "link").symlink_to(outside)
    used, inodes = tree_usage(str(upper))
    # upper, d, d/f (= hard), link
    assert inodes == 4
    assert 64 * 1024 <= used < (1 << 20)


def test_tree_usage_of_missing_dir_is_zero(tmp_path: Path) -> None:
    assert tree_usage(str(tmp_path / "gone")) == (0, 0)
