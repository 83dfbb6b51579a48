from __future__ import annotations

import os
from pathlib import Path

from crishim.images.trees import delete_tree


def test_a_tree_goes_whole_and_a_missing_one_is_fine(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"x" * 10)
    (root / "ro").mkdir()
    (root / "ro" / "g").write_text("y")
    (root / "ro").chmod(0o500)  # rm -rf as root deletes through a read-only directory
    os.symlink("/etc/passwd", root / "link")  # removed, never followed
    delete_tree(root)
    assert not root.exists()
    assert Path("/etc/passwd").exists()
    delete_tree(root)  # already gone: no error
    assert not root.exists()
