"""A container holding 101 MiB of known bytes in its memory, checkpointed and restored into a new pod.

The holder (tests/support/memory_holder.py) keeps `seq 1 13000000`'s output in a shell
variable of its first process and, asked, writes the md5 its own memory gives. It is
checkpointed left running, then restored from the archive in another pod: the restored
process must hold the same bytes (the md5 computed from the sequence, not only the same as
before), resident (its VmRSS at least the bytes held), and
the original must hold them still. The memory is the restored container's alone: it is in its own
cgroup (not the original's, where CRIU would put it back), its stats count it, and it outlives
the original's stop. Needs a CRIU that passes `criu check` (the node VM).
Under the VM's software emulation every step is slow: the timeouts are generous on purpose.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.oci.processes import alive

from tests.integration.test_checkpoint import _late_hook, _remove, _restore_config, _verbose_pid, needs_criu
from tests.support import memory_holder as holder
from tests.support.cri import (
    container_config,
    container_status,
    eventually,
    exec_checked,
    exec_output,
    remove_pod,
    run_pod,
    start_container,
    stop,
)
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

READY_TIMEOUT = 600.0  # seq writing 101 MiB into a shell variable, ~10x slower under emulation
DIGEST_TIMEOUT = 300.0  # md5sum of 101 MiB piped from the shell
CHECKPOINT_SECONDS = 600  # the request's own timeout
RESTORE_CALL_TIMEOUT = 600.0  # unpacking the archive (CreateContainer), CRIU reading it back (StartContainer)


@pytest.fixture(scope="module")
def pods(live_daemon: Daemon) -> Iterator[tuple[tuple[str, pb.PodSandboxConfig], tuple[str, pb.PodSandboxConfig]]]:
    """The holder's pod and the pod it is restored into, both on runc (CRIU through runc)."""
    old = run_pod(live_daemon, "memory-holder", handler="runc")
    try:
        new = run_pod(live_daemon, "memory-restored", handler="runc", hostname="memory-restored")
        try:
            yield old, new
        finally:
            remove_pod(live_daemon, new[0])
    finally:
        remove_pod(live_daemon, old[0])


def _digest(daemon: Daemon, cid: str) -> str:
    """The md5 of the bytes the holder's shell has in memory, as the process itself computes it."""
    exec_checked(daemon, cid, holder.ASK_DIGEST)
    answer = eventually(
        lambda: exec_output(daemon, cid, holder.READ_DIGEST), lambda out: out[0] == 0,
        timeout=DIGEST_TIMEOUT, interval=1.0, what=f"container {cid[:13]} to write the md5 of its memory",
    )  # fmt: skip
    return holder.parse_digest(answer[1])


def _vm_rss(pid: int) -> int:
    """VmRSS of `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def _working_set(daemon: Daemon, cid: str) -> int:
    request = pb.ContainerStatsRequest(container_id=cid)
    return int(daemon.runtime.ContainerStats(request, timeout=60).stats.memory.working_set_bytes.value)


def _assert_holds_the_bytes(daemon: Daemon, cid: str) -> None:
    """The container's first process has the bytes resident, and its memory's md5 is the sequence's."""
    pid = _verbose_pid(daemon, cid)
    assert _vm_rss(pid) >= holder.held_bytes(), (pid, _vm_rss(pid))
    assert _digest(daemon, cid) == holder.expected_md5()


def _page_bytes(location: Path) -> int:
    """The size of CRIU's page images in the archive."""
    with tarfile.open(location) as tar:
        return sum(m.size for m in tar if m.name.startswith("checkpoint/pages-") and m.name.endswith(".img"))


@pytest.fixture(scope="module")
def holders(
    live_daemon: Daemon, busybox: str, pods: tuple[tuple[str, pb.PodSandboxConfig], ...],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str]]:  # fmt: skip
    """The holder, filled and checked, then checkpointed left running and restored in the other pod:
    (the original's id, the restored one's)."""
    needs_criu()
    (old_sid, old_cfg), (new_sid, new_cfg) = pods
    cid = start_container(live_daemon, old_sid, old_cfg, container_config("holder", busybox, holder.COMMAND))
    restored = ""
    try:
        eventually(
            lambda: exec_output(live_daemon, cid, holder.IS_READY)[0], lambda code: code == 0,
            timeout=READY_TIMEOUT, interval=1.0, what="the holder to fill its memory",
        )  # fmt: skip
        _assert_holds_the_bytes(live_daemon, cid)
        assert _working_set(live_daemon, cid) >= holder.held_bytes()

        location = tmp_path_factory.mktemp("memory") / "memory.tar"
        request = pb.CheckpointContainerRequest(container_id=cid, location=str(location), timeout=CHECKPOINT_SECONDS)
        live_daemon.runtime.CheckpointContainer(request, timeout=CHECKPOINT_SECONDS + 60)
        # The memory went through CRIU's page images, not the writable layer.
        assert _page_bytes(location) >= holder.held_bytes()

        create = pb.CreateContainerRequest(
            pod_sandbox_id=new_sid, config=_restore_config("holder", location), sandbox_config=new_cfg
        )
        restored = live_daemon.runtime.CreateContainer(create, timeout=RESTORE_CALL_TIMEOUT).container_id
        # The pages are copied behind the call: CRIU is held by a hook until they are whole.
        assert len(_late_hook(live_daemon, restored)) == 1
        start = pb.StartContainerRequest(container_id=restored)
        live_daemon.runtime.StartContainer(start, timeout=RESTORE_CALL_TIMEOUT)
        assert _late_hook(live_daemon, restored) == []  # gone with the restore: a later checkpoint's spec is clean
        yield cid, restored
    finally:
        if restored:
            _remove(live_daemon, restored)
        _remove(live_daemon, cid)


def test_memory_of_101_mib_is_the_same_after_a_restore_in_a_new_pod(
    live_daemon: Daemon, holders: tuple[str, str]
) -> None:
    cid, restored = holders
    assert container_status(live_daemon, restored).state == pb.CONTAINER_RUNNING
    assert _verbose_pid(live_daemon, restored) != _verbose_pid(live_daemon, cid)
    _assert_holds_the_bytes(live_daemon, restored)
    # Left running by the checkpoint, the original holds them still.
    assert container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING
    _assert_holds_the_bytes(live_daemon, cid)


def test_the_restored_memory_is_accounted_to_the_restored_container_alone(
    live_daemon: Daemon, holders: tuple[str, str]
) -> None:
    """Runs last: it stops the original."""
    cid, restored = holders
    pid = _verbose_pid(live_daemon, restored)
    assert restored in Path(f"/proc/{pid}/cgroup").read_text()
    assert _working_set(live_daemon, restored) >= holder.held_bytes()
    stop(live_daemon, cid, timeout=0)
    assert container_status(live_daemon, restored).state == pb.CONTAINER_RUNNING
    assert alive(pid)
