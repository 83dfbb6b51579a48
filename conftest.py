"""Shared by tests/ and conformance/: the test registry fixtures and the `root` marker.

Tests marked `root` run real runc/crun, conmon, CNI plugins and mounts; without
root they skip and say why instead of failing. Under CI (CI=true) a run without
root is an error instead: skipping every root test there would pass CI on the unit
tests alone.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.registry", "tests.support.images"]


def running_in_ci() -> bool:
    """CI systems set CI=true (GitHub Actions, GitLab, and the node VM passes it on)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what this run does not select
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    needing_root = [item for item in items if "root" in item.keywords]
    if not needing_root:
        return
    if running_in_ci():
        raise pytest.UsageError(
            f"CI=true and not root: {len(needing_root)} selected tests need root "
            f"(e.g. {needing_root[0].nodeid}); run the suite as root, or deselect them with -m 'not root'"
        )
    skip = pytest.mark.skip(reason="needs root: runs real runc/crun, conmon, CNI and mounts")
    for item in needing_root:
        item.add_marker(skip)
