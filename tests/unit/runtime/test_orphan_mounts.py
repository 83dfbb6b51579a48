"""The start-up sweep unmounts what an unrecorded entry holds, a mount on the entry itself included."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from crishim.oci.mounttable import mount_points
from crishim.runtime.mounts import mount_tmpfs
from crishim.runtime.orphans import _unmount_under

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts tmpfs")


def test_a_stage_mounted_on_itself_and_mounts_below_are_unmounted(tmp_path: Path) -> None:
    stage = tmp_path / ".restore-abc"  # a restore's stage, unpacked in memory when a crash came
    mount_tmpfs(stage, source="crishim-checkpoint")
    mount_tmpfs(stage / "inner", source="crishim-checkpoint")
    beside = tmp_path / ".restore-abcd"  # a name that only starts like it is not touched
    mount_tmpfs(beside, source="crishim-checkpoint")
    try:
        _unmount_under(stage)
        left = [m for m in mount_points() if m.startswith(str(tmp_path))]
        assert left == [str(beside)]
    finally:
        _unmount_under(beside)
    assert [m for m in mount_points() if m.startswith(str(tmp_path))] == []
