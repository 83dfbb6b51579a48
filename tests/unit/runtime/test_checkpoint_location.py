"""Where CheckpointContainer may write: every refusal is INVALID_ARGUMENT naming the location."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.runtime.checkpoint.availability import criu_reason
from crishim.runtime.checkpoint.location import checked_location
from crishim.runtime.errors import InvalidArgument


def test_new_file_in_an_existing_directory_is_accepted(tmp_path: Path) -> None:
    assert checked_location(str(tmp_path / "c.tar")) == tmp_path / "c.tar"


def test_existing_regular_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "c.tar").write_bytes(b"old")
    assert checked_location(str(tmp_path / "c.tar")) == tmp_path / "c.tar"


@pytest.mark.parametrize("location", ["", "c.tar", "./c.tar", "/tmp/../tmp/c.tar", "/tmp/c.tar/", "/tmp//c.tar"])
def test_empty_relative_or_unclean_paths_are_refused(location: str) -> None:
    with pytest.raises(InvalidArgument, match="location"):
        checked_location(location)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="directory"):
        checked_location(str(tmp_path / "absent" / "c.tar"))


def test_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.tar").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidArgument, match="symlink"):
        checked_location(str(tmp_path / "c.tar"))


def test_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.tar").mkdir()
    with pytest.raises(InvalidArgument, match="not a regular file"):
        checked_location(str(tmp_path / "c.tar"))


def test_criu_reason_is_its_first_error_line() -> None:
    output = (
        "Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\n"
        "Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.\n"
    )
    assert criu_reason(output) == "Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable"
    assert criu_reason("") == "no output"
