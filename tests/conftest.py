"""Shared pytest set-up: the `root` marker skips, saying why, when not root."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED_TOOLS = ("runc", "conmon")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: runs real runc/crun, conmon, CNI and mounts")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None
