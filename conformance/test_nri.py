"""critest after v1.36, "NRI": the 13 contract specs, with our own NRI test plugin.

critest runs them with `-nri-socket`, connecting a Go test plugin to the runtime's NRI
socket; here tests/support/nri_plugin.py connects to this suite's daemon the same way
and speaks the same protocol. Each test follows its spec's steps and checks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri
from tests.support import critest as ct
from tests.support.daemon import Daemon
from tests.support.nri_plugin import Event, NriTestPlugin

pytestmark = [pytest.mark.root]

HOOK_WAIT = 30.0


@pytest.fixture
def plugin(daemon: Daemon) -> Iterator[NriTestPlugin]:
    with NriTestPlugin(daemon.dir / "nri" / "nri.sock", "cri-test-nri", "00") as first:
        yield first.start()


def of_pod(events: list[Event], pod_id: str) -> list[Event]:
    return [e for e in events if e.pod_id == pod_id]


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def first(events: list[Event], kind: str, container_id: str = "") -> Event:
    return next(e for e in events if e.kind == kind and (not container_id or e.container_id == container_id))


def holding(plugin: NriTestPlugin, event: str) -> tuple[threading.Event, threading.Event, list[Any]]:
    """A hook on `event` that blocks until released; returns (reached, release, the hook's arguments)."""
    reached, release = threading.Event(), threading.Event()
    seen: list[Any] = []

    def hook(*args: object) -> None:
        if reached.is_set():
            return  # only the first call is held
        seen.extend(args)
        reached.set()
        release.wait(HOOK_WAIT)

    plugin.hooks[event] = hook
    return reached, release, seen


def failing_once(plugin: NriTestPlugin, event: str, message: str) -> None:
    failed = threading.Event()

    def hook(*args: object) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError(message)

    plugin.hooks[event] = hook


def test_nri_pod_events_in_order(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI pod sandbox lifecycle should receive RunPodSandbox, StopPodSandbox, and
    RemovePodSandbox in strict order with correct metadata [Serial]"""
    config = ct.pod_config(daemon, "nri-test-pod-lifecycle-")
    pod_id = cri.run_pod_sandbox(daemon, config)
    cri.stop_pod(daemon, pod_id)
    cri.remove_pod_sandbox(daemon, pod_id)
    events = plugin.wait_for(lambda ev: len(of_pod(ev, pod_id)) >= 3)
    ours = of_pod(events, pod_id)
    assert kinds(ours) == ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"]
    run = ours[0]
    md = config.metadata
    assert (run.pod_name, run.pod_namespace, run.pod_uid) == (md.name, md.namespace, md.uid)
    assert ours[0].at < ours[1].at < ours[2].at


def test_nri_container_events_in_order(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI container lifecycle should receive CreateContainer, StartContainer, StopContainer,
    and RemoveContainer in strict order with correct metadata [Serial]"""
    with ct.pod(daemon, prefix="nri-test-ctr-lifecycle-") as (pod_id, pod_config):
        plugin.reset()
        config = ct.container_config("nri-test-container-", command=ct.PAUSE_COMMAND)
        cid = ct.create_container(daemon, pod_id, pod_config, config)
        cri.start(daemon, cid)
        cri.stop(daemon, cid, 60)
        cri.remove_container(daemon, cid)
        wanted = ["CreateContainer", "StartContainer", "StopContainer", "RemoveContainer"]
        events = plugin.wait_for(lambda ev: set(wanted) <= set(kinds([e for e in ev if e.container_id == cid])))
        ours = [e for e in events if e.container_id == cid and e.kind in wanted]
        assert kinds(ours) == wanted
        assert {e.container_name for e in ours} == {config.metadata.name}
        assert {e.pod_id for e in ours} == {pod_id}
        assert ours[0].at < ours[1].at < ours[2].at < ours[3].at


def test_nri_failed_container_events(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI container lifecycle (failed container) should receive CreateContainer,
    StartContainer, StopContainer, and RemoveContainer for a container that exits with a non-zero code [Serial]"""
    with ct.pod(daemon, prefix="nri-test-ctr-fail-") as (pod_id, pod_config):
        plugin.reset()
        config = ct.container_config("nri-test-failed-container-", command=["sh", "-c", "exit 1"])
        cid = ct.create_container(daemon, pod_id, pod_config, config)
        cri.start(daemon, cid)
        assert cri.wait_exited(daemon, cid).exit_code == 1
        wanted = ["CreateContainer", "StartContainer", "StopContainer"]
        events = plugin.wait_for(lambda ev: set(wanted) <= set(kinds([e for e in ev if e.container_id == cid])))
        create, start, stop = (first(events, kind, cid) for kind in wanted)
        assert create.at < start.at < stop.at
        assert stop.container is not None
        assert stop.container.exit_code == 1
        assert {create.container_name, start.container_name, stop.container_name} == {config.metadata.name}
        cri.remove_container(daemon, cid)
        events = plugin.wait_for(lambda ev: any(e.kind == "RemoveContainer" and e.container_id == cid for e in ev))
        assert stop.at < first(events, "RemoveContainer", cid).at


def test_nri_run_pod_hidden_while_hook_runs(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI RunPodSandbox contract should not expose sandbox while RunPodSandbox hook is in progress [Serial]"""
    reached, release, seen = holding(plugin, "RunPodSandbox")
    config = ct.pod_config(daemon, "nri-test-block-run-")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(cri.run_pod_sandbox, daemon, config)
        try:
            assert reached.wait(HOOK_WAIT)
            hook_pod_id = seen[0].id
            assert hook_pod_id not in {p.id for p in cri.list_pods(daemon)}
            assert cri.rpc_code(lambda: cri.pod_status(daemon, hook_pod_id)) == grpc.StatusCode.NOT_FOUND
        finally:
            release.set()
        pod_id = running.result(60)
    try:
        assert pod_id == hook_pod_id
        assert cri.pod_status(daemon, pod_id).status.state == pb.SANDBOX_READY
    finally:
        cri.remove_pod(daemon, pod_id)


def test_nri_no_workload_before_run_pod_hook_completes(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI RunPodSandbox contract should not start workload containers until
    RunPodSandbox hook completes [Serial]"""
    reached, release, seen = holding(plugin, "RunPodSandbox")
    config = ct.pod_config(daemon, "nri-test-block-container-")
    early = ct.container_config("nri-test-while-blocked-", command=ct.PAUSE_COMMAND)
    ct.prepare_image(daemon, config, early)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(cri.run_pod_sandbox, daemon, config)
        try:
            assert reached.wait(HOOK_WAIT)
            hook_pod_id = seen[0].id
            cri.refusal(lambda: cri.create_container(daemon, hook_pod_id, config, early))
        finally:
            release.set()
        pod_id = running.result(60)
    try:
        later = ct.container_config("nri-test-after-hook-", command=ct.PAUSE_COMMAND)
        assert ct.create_container(daemon, pod_id, config, later)
    finally:
        cri.remove_pod(daemon, pod_id)


def test_nri_run_pod_hook_error_cleans_up_and_allows_retry(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI RunPodSandbox contract should fail RunPodSandbox and clean up when the NRI hook
    errors, then allow retry [Serial]"""
    failing_once(plugin, "RunPodSandbox", "induced NRI RunPodSandbox failure")
    config = ct.pod_config(daemon, "nri-test-run-error-")
    refused = cri.refusal(lambda: cri.run_pod_sandbox(daemon, config))
    assert "induced NRI RunPodSandbox failure" in (refused.details() or "")
    attempted = [e.pod_id for e in plugin.recorded() if e.kind == "RunPodSandbox"][-1]
    for listed in cri.list_pods(daemon):
        assert listed.id != attempted
        assert listed.metadata.name != config.metadata.name
    assert not (daemon.dir / "root" / "sandboxes" / attempted).exists()
    pod_id = cri.run_pod_sandbox(daemon, config)
    try:
        assert cri.pod_status(daemon, pod_id).status.state == pb.SANDBOX_READY
    finally:
        cri.remove_pod(daemon, pod_id)


def test_nri_stop_pod_stops_containers_before_hook(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI StopPodSandbox contract should stop all workload containers and keep sandbox
    accessible while StopPodSandbox hook is in progress [Serial]"""
    reached, release, _ = holding(plugin, "StopPodSandbox")
    with ct.pod(daemon, prefix="nri-test-stop-state-") as (pod_id, pod_config):
        config = ct.container_config("nri-test-stop-state-ctr-", command=ct.PAUSE_COMMAND)
        cid = ct.create_container(daemon, pod_id, pod_config, config)
        cri.start(daemon, cid)
        with ThreadPoolExecutor(1) as pool:
            stopping = pool.submit(cri.stop_pod, daemon, pod_id)
            try:
                assert reached.wait(HOOK_WAIT)
                listed = cri.list_containers(daemon, pb.ContainerFilter(pod_sandbox_id=pod_id))
                assert [c.state for c in listed] == [pb.CONTAINER_EXITED]
                assert cri.pod_status(daemon, pod_id).status.id == pod_id
            finally:
                release.set()
            stopping.result(60)


def test_nri_stop_pod_is_idempotent_and_final(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI StopPodSandbox contract should handle StopPodSandbox idempotently and never reuse
    sandbox [Serial]"""
    with ct.pod(daemon, prefix="nri-test-stop-idempotent-") as (pod_id, pod_config):
        cri.stop_pod(daemon, pod_id)
        stops = lambda: [e for e in of_pod(plugin.recorded(), pod_id) if e.kind == "StopPodSandbox"]  # noqa: E731
        plugin.wait_for(lambda _: len(stops()) >= 1)
        cri.stop_pod(daemon, pod_id)
        config = ct.container_config("nri-test-reuse-after-stop-", command=ct.PAUSE_COMMAND)
        ct.prepare_image(daemon, pod_config, config)
        cri.refusal(lambda: cri.create_container(daemon, pod_id, pod_config, config))
        assert len(stops()) == 1
        assert "CreateContainer" not in kinds(of_pod(plugin.recorded(), pod_id))


def test_nri_create_container_hidden_while_hook_runs(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI CreateContainer contract should not expose container while CreateContainer hook
    is in progress [Serial]"""
    reached, release, seen = holding(plugin, "CreateContainer")
    with ct.pod(daemon, prefix="nri-test-create-") as (pod_id, pod_config):
        config = ct.container_config("nri-test-block-create-", command=ct.PAUSE_COMMAND)
        ct.prepare_image(daemon, pod_config, config)
        with ThreadPoolExecutor(1) as pool:
            creating = pool.submit(cri.create_container, daemon, pod_id, pod_config, config)
            try:
                assert reached.wait(HOOK_WAIT)
                hook_cid = seen[1].id
                listed = cri.list_containers(daemon, pb.ContainerFilter(pod_sandbox_id=pod_id))
                assert hook_cid not in {c.id for c in listed}
                assert cri.rpc_code(lambda: cri.container_status(daemon, hook_cid)) == grpc.StatusCode.NOT_FOUND
            finally:
                release.set()
            cid = creating.result(60)
        assert cid == hook_cid
        assert cri.container_status(daemon, cid).state == pb.CONTAINER_CREATED


def test_nri_create_container_hook_error_leaks_nothing(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI CreateContainer contract should fail CreateContainer when the NRI hook errors,
    leak nothing, and allow retry [Serial]"""
    with ct.pod(daemon, prefix="nri-test-create-") as (pod_id, pod_config):
        failing_once(plugin, "CreateContainer", "induced NRI CreateContainer failure")
        plugin.reset()
        config = ct.container_config("nri-test-create-error-ctr-", command=ct.PAUSE_COMMAND)
        ct.prepare_image(daemon, pod_config, config)
        refused = cri.refusal(lambda: cri.create_container(daemon, pod_id, pod_config, config))
        assert "induced NRI CreateContainer failure" in (refused.details() or "")
        attempted = first(plugin.recorded(), "CreateContainer").container_id
        assert cri.list_containers(daemon, pb.ContainerFilter(pod_sandbox_id=pod_id)) == []
        assert not (daemon.dir / "root" / "containers" / attempted).exists()
        assert "StartContainer" not in kinds(plugin.recorded())
        cid = ct.create_container(daemon, pod_id, pod_config, config)  # the same name
        cri.start(daemon, cid)
        cri.stop(daemon, cid, 0)
        cri.remove_container(daemon, cid)


def test_nri_late_plugin_is_synchronized(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI plugin synchronization should synchronize a newly connected plugin with existing
    pods and containers [Serial]"""
    with ct.pod(daemon, prefix="nri-test-sync-") as (pod_id, pod_config):
        cid = ct.create_container(daemon, pod_id, pod_config, ct.container_config("nri-test-sync-ctr-"))
        cri.start(daemon, cid)
        with NriTestPlugin(daemon.dir / "nri" / "nri.sock", "cri-test-nri-sync-second", "10") as second:
            second.start()
            assert pod_id in second.synced_pods
            assert cid in second.synced_containers
            cid2 = ct.create_container(daemon, pod_id, pod_config, ct.container_config("nri-test-sync-ctr2-"))
            cri.start(daemon, cid2)
            second.wait_for(lambda ev: any(e.kind == "CreateContainer" and e.container_id == cid2 for e in ev))


def seen_by(plugin: NriTestPlugin, container_ids: list[str]) -> list[str]:
    """The containers the plugin never heard of, neither in Synchronize nor as CreateContainer."""
    created = {e.container_id for e in plugin.recorded() if e.kind == "CreateContainer"}
    return [cid for cid in container_ids if cid not in created and cid not in plugin.synced_containers]


def create_and_start(daemon: Daemon, pod_id: str, pod_config: pb.PodSandboxConfig, prefix: str) -> str:
    cid = ct.create_container(daemon, pod_id, pod_config, ct.container_config(prefix))
    cri.start(daemon, cid)
    return cid


def blocking_sync_plugin(daemon: Daemon, name: str) -> tuple[NriTestPlugin, threading.Event]:
    """A second plugin whose Synchronize is held until the returned event is set."""
    second = NriTestPlugin(daemon.dir / "nri" / "nri.sock", name, "10")
    release = threading.Event()
    second.hooks["Synchronize"] = lambda *_: release.wait(HOOK_WAIT)
    second.start(wait_ready=False)
    return second, release


def test_nri_container_created_during_synchronize_is_not_lost(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI plugin synchronization should receive a callback for container created during
    the Synchronize call [Serial]"""
    with ct.pod(daemon, prefix="nri-test-sync2-") as (pod_id, pod_config):
        create_and_start(daemon, pod_id, pod_config, "nri-test-sync2-ctr-")
        second, release = blocking_sync_plugin(daemon, "cri-test-nri-sync2-second")
        with second, ThreadPoolExecutor(1) as pool:
            during = pool.submit(create_and_start, daemon, pod_id, pod_config, "nri-test-sync2-ctr2-")
            threading.Event().wait(2)  # the create is in flight while Synchronize is held
            release.set()
            assert second.ready.wait(HOOK_WAIT)
            cid = during.result(60)
            cri.eventually(
                lambda: seen_by(second, [cid]), lambda lost: lost == [], what="the container reaching the late plugin"
            )


def test_nri_synchronize_sees_every_container(daemon: Daemon, plugin: NriTestPlugin) -> None:
    """[k8s.io] NRI plugin synchronization should receive information about all containers without
    the race condition during initialization [Serial]"""
    with ct.pod(daemon, prefix="nri-test-sync3-") as (pod_id, pod_config):
        before = [create_and_start(daemon, pod_id, pod_config, "nri-test-sync3-before-") for _ in range(2)]
        second, release = blocking_sync_plugin(daemon, "cri-test-nri-sync3-second")
        with second, ThreadPoolExecutor(3) as pool:
            during = [
                pool.submit(create_and_start, daemon, pod_id, pod_config, "nri-test-sync3-during-") for _ in range(3)
            ]
            threading.Event().wait(2)
            release.set()
            assert second.ready.wait(HOOK_WAIT)
            made = before + [f.result(120) for f in during]
            made += [create_and_start(daemon, pod_id, pod_config, "nri-test-sync3-after-") for _ in range(2)]
            assert len(set(made)) == 7
            cri.eventually(
                lambda: seen_by(second, made), lambda lost: lost == [], what="every container reaching the late plugin"
            )
