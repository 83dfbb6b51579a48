"""The daemon, a child subreaper, leaves no zombie among its children: probes and orphans alike."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import container_config, remove_pod, run_pod, start_container, wait_exited
from tests.support.daemon import Daemon, running_daemon

pytestmark = pytest.mark.root


def zombie_children(pid: int) -> list[str]:
    """`pid`'s children that have exited and were never collected, as `comm (pid)`."""
    zombies = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, _, rest = text.partition(" (")[2].rpartition(") ")
        fields = rest.split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            zombies.append(f"{comm} ({stat.parent.name})")
    return zombies


def settled_zombies(daemon: Daemon, seconds: float = 5.0) -> list[str]:
    """The zombies still there after `seconds`: a child that just exited gets a moment to be reaped."""
    assert daemon.proc is not None
    deadline = time.monotonic() + seconds
    while (zombies := zombie_children(daemon.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return zombies


def test_no_zombie_children_after_start_up_or_a_lifecycle(test_images) -> None:
    with running_daemon() as daemon:
        assert settled_zombies(daemon) == []
        image = test_images.ref("busybox:latest")
        daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=120)
        sandbox_id, pod = run_pod(daemon, "reaped")
        start_container(daemon, sandbox_id, pod, container_config("sleeper", image, ["sleep", "1000"]))
        done = start_container(daemon, sandbox_id, pod, container_config("done", image, ["true"]))
        wait_exited(daemon, done)
        remove_pod(daemon, sandbox_id)
        assert settled_zombies(daemon) == []
