"""Shared by tests/ and conformance/: the test registry fixtures and the `root` marker.

Tests marked `root` run real runc/crun, conmon, CNI plugins and mounts; without
root they skip and say why instead of failing.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.registry", "tests.support.images"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: runs real runc/crun, conmon, CNI and mounts")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
