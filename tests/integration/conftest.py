"""A live daemon per test module, and helpers to drive it through CRI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cri import pull_test_image
from tests.support.daemon import Daemon, running_daemon
from tests.support.images import TestImages


@pytest.fixture(scope="module")
def live_daemon() -> Iterator[Daemon]:
    with running_daemon() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def busybox(live_daemon: Daemon, test_images: TestImages) -> str:
    return pull_test_image(live_daemon, test_images)
