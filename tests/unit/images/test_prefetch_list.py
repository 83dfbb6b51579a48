"""The pre-fetch list: the file `crishim images prefetch` reads, and its rows in the image database."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.images.errors import InvalidArgument
from crishim.images.metadata import Metadata
from crishim.images.prefetch import CONFIG_SOURCE, MANUAL_SOURCE, read_list


def test_list_file_skips_comments_blank_lines_and_repeats() -> None:
    text = "# node images\nregistry.example.com/a:1\n\n  registry.example.com/b@sha256:" + "0" * 64 + "  # pinned\n"
    text += "registry.example.com/a:1\n"
    assert read_list(text) == ["registry.example.com/a:1", "registry.example.com/b@sha256:" + "0" * 64]


def test_list_file_with_a_bad_reference_is_refused_naming_it() -> None:
    with pytest.raises(InvalidArgument, match="Not/Valid"):
        read_list("registry.example.com/a:1\nregistry.example.com/Not/Valid:1\n")


def test_sources_are_kept_apart_and_replacing_one_returns_what_it_dropped(tmp_path: Path) -> None:
    meta = Metadata(tmp_path / "images.db")
    try:
        assert meta.set_prefetch_refs(CONFIG_SOURCE, ["a:1", "b:1"], replace=True) == []
        assert meta.set_prefetch_refs(MANUAL_SOURCE, ["b:1", "c:1"], replace=False) == []
        assert meta.prefetch_refs() == ["a:1", "b:1", "c:1"]
        assert meta.set_prefetch_refs(CONFIG_SOURCE, ["b:1"], replace=True) == ["a:1"]
        assert meta.prefetch_refs(CONFIG_SOURCE) == ["b:1"]
        assert meta.prefetch_refs() == ["b:1", "c:1"]
        assert meta.set_prefetch_refs(MANUAL_SOURCE, ["d:1"], replace=True) == ["b:1", "c:1"]
        assert meta.prefetch_refs() == ["b:1", "d:1"]  # b:1 is still configured
    finally:
        meta.close()


def test_the_list_survives_reopening_the_database(tmp_path: Path) -> None:
    meta = Metadata(tmp_path / "images.db")
    meta.set_prefetch_refs(MANUAL_SOURCE, ["a:1"], replace=False)
    meta.close()
    reopened = Metadata(tmp_path / "images.db")
    try:
        assert reopened.prefetch_refs(MANUAL_SOURCE) == ["a:1"]
    finally:
        reopened.close()
