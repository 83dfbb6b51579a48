"""A name that is taken is refused before any work: no conmon, no runc container, no bundle.

The daemon here runs its pods under `logged`, a wrapper around the real runc
that writes each invocation to a file and, while a marker file `hold-<command>`
exists, holds that command (`create`, `delete`) for a few seconds, so a second
call can arrive while the first one is still in flight.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import container_config, create_container, pull_test_image, remove_pod, run_pod
from tests.support.daemon import Daemon, running_daemon
from tests.support.images import TestImages

pytestmark = pytest.mark.root

HANDLER = "logged"
HOLD_SECONDS = 3


@dataclass
class Wrapper:
    calls: Path  # one line per runc invocation: its arguments

    def hold(self, command: str) -> Path:
        """While this file exists, `command` waits HOLD_SECONDS before it runs."""
        return self.calls.parent / f"hold-{command}"


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory: pytest.TempPathFactory) -> Wrapper:
    base = tmp_path_factory.mktemp("logged-runc")
    base.chmod(0o711)
    runc = shutil.which("runc")
    assert runc is not None
    calls = base / "calls"
    script = base / "runc"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        'for arg in "$@"; do\n'
        f'  case "$arg" in create|delete) [ -e "{base}/hold-$arg" ] && sleep {HOLD_SECONDS} ;; esac\n'
        "done\n"
        f'exec {runc} "$@"\n'
    )
    script.chmod(0o755)
    return Wrapper(calls)


@pytest.fixture(scope="module")
def daemon(wrapper: Wrapper) -> Iterator[Daemon]:
    # Pods keep a pause container here, so that RunPodSandbox and StopPodSandbox run the
    # runtime commands the wrapper holds (a pod without one runs none).
    handler = f'[runtimes.{HANDLER}]\ntype = "runc"\npath = "{wrapper.calls.parent / "runc"}"\n'
    config = f"drop_infra_container = false\n{handler}"
    with running_daemon(config) as d:
        yield d


@pytest.fixture(scope="module")
def busybox(daemon: Daemon, test_images: TestImages) -> str:
    return pull_test_image(daemon, test_images)


@contextmanager
def holding(wrapper: Wrapper, command: str) -> Iterator[None]:
    wrapper.hold(command).touch()
    try:
        yield
    finally:
        wrapper.hold(command).unlink(missing_ok=True)


@dataclass(frozen=True)
class Work:
    """What a create leaves on the node: runc creates issued, bundles, runc containers, conmons."""

    runc_creates: int
    bundles: frozenset[str]
    runc_containers: frozenset[str]
    conmons: int


def work_done(daemon: Daemon, wrapper: Wrapper) -> Work:
    calls = wrapper.calls.read_text().splitlines() if wrapper.calls.exists() else []
    bundles = frozenset(p.name for d in ("containers", "sandboxes") for p in (daemon.root / d).glob("*"))
    listed = subprocess.run(
        ["runc", "--root", str(daemon.dir / "run" / HANDLER), "list", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Work(
        runc_creates=sum(" create " in f" {line} " for line in calls),
        bundles=bundles,
        runc_containers=frozenset(listed.stdout.split()),
        conmons=_conmons_of(daemon),
    )


def _conmons_of(daemon: Daemon) -> int:
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"conmon") and str(daemon.dir).encode() in b" ".join(argv):
            count += 1
    return count


def outcomes(calls: list[Callable[[], str]]) -> tuple[list[str], list[grpc.RpcError]]:
    """Runs the calls at the same time: (their results, their gRPC errors)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
    won = [f.result() for f in futures if f.exception() is None]
    lost = [f.exception() for f in futures if f.exception() is not None]
    assert all(isinstance(e, grpc.RpcError) for e in lost), lost
    return won, [e for e in lost if isinstance(e, grpc.RpcError)]


def test_taken_container_name_is_refused_before_any_work(daemon: Daemon, wrapper: Wrapper, busybox: str) -> None:
    sid, pod = run_pod(daemon, "taken-name", handler=HANDLER)
    try:
        first = create_container(daemon, sid, pod, container_config("app", busybox, ["sleep", "3600"]))
        before = work_done(daemon, wrapper)
        with pytest.raises(grpc.RpcError) as refused:
            create_container(daemon, sid, pod, container_config("app", busybox, ["true"]))
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert first in (refused.value.details() or "")
        assert work_done(daemon, wrapper) == before
        # Another attempt number is another name.
        again = container_config("app", busybox, ["true"])
        again.metadata.attempt = 1
        assert create_container(daemon, sid, pod, again) != first
    finally:
        remove_pod(daemon, sid)


def test_concurrent_creates_of_one_container_name_one_wins(daemon: Daemon, wrapper: Wrapper, busybox: str) -> None:
    sid, pod = run_pod(daemon, "twin-containers", handler=HANDLER)
    try:
        before = work_done(daemon, wrapper)
        config = container_config("twin", busybox, ["sleep", "3600"])
        with holding(wrapper, "create"):
            won, lost = outcomes([lambda: create_container(daemon, sid, pod, config)] * 2)
        assert len(won) == 1, lost
        assert [e.code() for e in lost] == [grpc.StatusCode.ALREADY_EXISTS]
        assert "is being created as" in (lost[0].details() or "")
        after = work_done(daemon, wrapper)
        # The loser made nothing: one `runc create`, one bundle, one runc container, one conmon.
        assert after.runc_creates == before.runc_creates + 1
        assert after.bundles - before.bundles == {won[0]}
        assert after.runc_containers - before.runc_containers == {won[0]}
        assert after.conmons == before.conmons + 1
        listed = daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
        assert [c.id for c in listed if c.metadata.name == "twin"] == won
    finally:
        remove_pod(daemon, sid)


def test_concurrent_runs_of_one_pod_name_one_wins(daemon: Daemon, wrapper: Wrapper) -> None:
    before = work_done(daemon, wrapper)
    with holding(wrapper, "create"):
        won, lost = outcomes([lambda: run_pod(daemon, "twin-pods", handler=HANDLER)[0]] * 2)
    try:
        assert len(won) == 1, lost
        assert [e.code() for e in lost] == [grpc.StatusCode.ALREADY_EXISTS]
        after = work_done(daemon, wrapper)
        assert after.runc_creates == before.runc_creates + 1
        assert after.bundles - before.bundles == {won[0]}
    finally:
        for sid in won:
            remove_pod(daemon, sid)


def test_no_container_is_created_in_a_pod_being_stopped(daemon: Daemon, wrapper: Wrapper, busybox: str) -> None:
    sid, pod = run_pod(daemon, "stopping", handler=HANDLER)
    try:
        stop = pb.StopPodSandboxRequest(pod_sandbox_id=sid)
        # The stop holds the pod's lock while the infra container is deleted.
        with holding(wrapper, "delete"), ThreadPoolExecutor(1) as pool:
            stopping = pool.submit(daemon.runtime.StopPodSandbox, stop, timeout=60)
            deadline = time.monotonic() + 10
            while " delete " not in f" {wrapper.calls.read_text()} " and time.monotonic() < deadline:
                time.sleep(0.05)
            before = work_done(daemon, wrapper)
            with pytest.raises(grpc.RpcError) as refused:
                create_container(daemon, sid, pod, container_config("late", busybox, ["sleep", "3600"]))
            stopping.result()
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is not ready" in (refused.value.details() or "")
        assert work_done(daemon, wrapper).runc_creates == before.runc_creates
    finally:
        remove_pod(daemon, sid)
