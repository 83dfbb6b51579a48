"""Pod metrics read the pod's interfaces through a process in its pinned netns: the infra
process, or in a pod without one a running container's, never a process elsewhere."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from crishim.runtime.state.records import SandboxMeta
from crishim.runtime.stats import _pod_network

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts a process in a network namespace of its own")


def _pod(netns_path: str, pid: int = 0) -> SandboxMeta:
    return SandboxMeta(
        id="s1", name="pod", namespace="ns", uid="u", attempt=0, created_at=1, runtime_handler="runc",
        config=b"", bundle="/nonexistent", netns_path=netns_path, pid=pid, infra_container=pid > 0,
    )  # fmt: skip


@pytest.fixture
def elsewhere() -> Iterator[int]:
    """A process in a network namespace of its own (unshare -n), as a reused PID might be."""
    proc = subprocess.Popen(["unshare", "-n", "sh", "-c", "echo in; exec sleep 60"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"in\n"  # unshared by now
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_pod_without_infra_reads_through_a_container_in_its_netns(elsewhere: int) -> None:
    pinned = f"/proc/{os.getpid()}/ns/net"  # the pod's netns stands in for this process's own
    counters = _pod_network(_pod(pinned), [elsewhere, os.getpid()])
    assert counters, "no interface read through the container in the pod's netns"
    assert {c.interface for c in counters} <= set(os.listdir("/sys/class/net"))


def test_no_process_in_the_pods_netns_reads_nothing(elsewhere: int) -> None:
    pinned = f"/proc/{os.getpid()}/ns/net"
    assert _pod_network(_pod(pinned), [elsewhere]) == []
    assert _pod_network(_pod(pinned, pid=elsewhere), []) == []
    assert _pod_network(_pod(""), [os.getpid()]) == []  # host network: the node's, not the pod's
