"""critest "Container OOM": a container over its memory limit ends OOMKilled with exit code 137."""

from __future__ import annotations

import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

MEMORY_LIMIT = 15 * 1024 * 1024


def test_container_over_memory_limit_exits_137_oomkilled(daemon: Daemon) -> None:
    """[k8s.io] Container OOM runtime should output OOMKilled reason should terminate with exitCode 137 and
    reason OOMKilled"""
    with critest.privileged_pod(daemon) as (pod_id, pod_cfg):
        # dd with a 20 MiB block buffer cannot fit in 15 MiB of memory (swap capped to the same).
        container = critest.container_config(
            "OOM-test-",
            command=["sh", "-c", "dd if=/dev/zero of=/dev/null bs=20M"],
            linux=pb.LinuxContainerConfig(
                resources=pb.LinuxContainerResources(
                    memory_limit_in_bytes=MEMORY_LIMIT, memory_swap_limit_in_bytes=MEMORY_LIMIT
                )
            ),
        )
        cid = critest.create_container(daemon, pod_id, pod_cfg, container)
        cri.container_status(daemon, cid, verbose=True)

        cri.start(daemon, cid)
        cri.wait_exited(daemon, cid)
        status = cri.eventually(
            lambda: cri.container_status(daemon, cid),
            lambda s: s.reason == "OOMKilled",
            timeout=60.0,
            what="reason OOMKilled",
        )
        assert status.exit_code == 137, f"exit code {status.exit_code}, reason {status.reason!r}"
