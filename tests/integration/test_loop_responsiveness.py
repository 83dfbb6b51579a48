"""CRI calls go on while the daemon deletes GBs: removing a large image, cancelling its pull.

A kubelet's PullImage deadline cancels the pull; undoing it deletes what was unpacked.
Neither that nor RemoveImage may run on the event loop, so a tight loop of Version calls
through the daemon's socket must never wait MAX_STALL longer than its worst call while the
daemon is idle. Deleting the 1 GiB tree on the loop stalls it for 0.6-1.6 s here, and an
unpack that outlives the deadline for tens of seconds; a busy 2-core node's own noise
reaches 0.25 s. How far under 50 ms the daemon stays is measured by scripts/bench-loop
(speed is a benchmark's figure, not a test's).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.daemon import Daemon, running_daemon
from tests.support.loopstall import cancel_stall, layers_dir, leftovers, push_big_image, remove_stall, spec
from tests.support.registry import RegistryServer

pytest_plugins = ["tests.support.registry"]

# Pulling and unpacking 1 GiB and removing it: about 80 s a test on the host, ten times that under emulation.
pytestmark = [pytest.mark.root, pytest.mark.timeout(1800)]

MAX_STALL = 0.5


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon() as live:
        yield live


@pytest.fixture(scope="module")
def big_image(registry: RegistryServer) -> str:
    return push_big_image(registry.host)


def test_removing_a_large_image_does_not_stall_cri_calls(daemon: Daemon, big_image: str) -> None:
    before = set(layers_dir(daemon).iterdir())
    daemon.images.PullImage(pb.PullImageRequest(image=spec(big_image)), timeout=600)
    assert leftovers(daemon, before)

    worst, floor = remove_stall(daemon, big_image)

    assert leftovers(daemon, before) == []
    assert worst < floor + MAX_STALL, (
        f"a Version call waited {worst * 1000:.0f} ms during RemoveImage ({floor * 1000:.0f} ms when idle)"
    )


def test_cancelling_a_large_pull_does_not_stall_cri_calls(daemon: Daemon, big_image: str) -> None:
    daemon.images.RemoveImage(pb.RemoveImageRequest(image=spec(big_image)), timeout=120)
    before = set(layers_dir(daemon).iterdir())

    try:
        worst, floor = cancel_stall(daemon, big_image, before)
    except grpc.RpcError as exc:
        pytest.fail(f"the pull failed with {exc.code()} instead of DEADLINE_EXCEEDED: {exc.details()}")

    assert leftovers(daemon, before) == []
    assert worst < floor + MAX_STALL, (
        f"a Version call waited {worst * 1000:.0f} ms while a cancelled pull was undone "
        f"({floor * 1000:.0f} ms when idle)"
    )
