"""A live daemon per test module, and helpers to drive it through CRI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.daemon import Daemon, running_daemon


@pytest.fixture(scope="module")
def live_daemon() -> Iterator[Daemon]:
    with running_daemon() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def busybox(live_daemon: Daemon, test_images) -> str:  # type: ignore[no-untyped-def]
    ref = test_images.ref("busybox:latest")
    live_daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=120)
    return ref  # type: ignore[no-any-return]
