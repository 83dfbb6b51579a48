"""The pause image made by a child process (runtime/pause_import.py), as a first start does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from crishim.images.pause import PAUSE_ENTRYPOINT, PAUSE_IMAGE
from crishim.images.store import ImageStore
from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.pause_import import import_pause_image


@pytest.mark.root
async def test_the_child_imports_the_pause_image_into_an_open_store(tmp_path: Path) -> None:
    root = tmp_path / "images"
    store = ImageStore(root, None)  # open, as the daemon's is while the child works
    try:
        await import_pause_image(root)
        record = store.resolve(PAUSE_IMAGE)
        assert PAUSE_IMAGE in record.repo_tags
        assert store.config(record.id)["config"]["Entrypoint"] == list(PAUSE_ENTRYPOINT)
        (layer,) = store.layer_paths(record.id)
        assert (layer / "catatonit").read_bytes() == Path("/usr/bin/catatonit").read_bytes()  # noqa: ASYNC240
    finally:
        store.close()


async def test_a_failing_child_is_a_failed_precondition_naming_the_cause(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(FailedPrecondition, match=r"cannot make the built-in pause image: FileExistsError: .*/file"):
        await import_pause_image(not_a_dir)


def test_the_child_without_a_store_says_how_to_call_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "crishim.runtime.pause_import"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "usage: python -m crishim.runtime.pause_import IMAGE_STORE_DIR" in done.stderr
