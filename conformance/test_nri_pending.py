"""critest after v1.36, "NRI": the 13 contract specs, pending until crishim serves NRI (issue 18).

critest runs them with `-nri-socket`, connecting a test plugin of its own to the runtime's
NRI socket, and skips them without one. crishim serves no NRI socket yet, so each spec
is here as an expected failure at its first step, a plugin connecting to the socket this
suite's daemon will serve plugins on. The failure is strict: once the daemon serves NRI,
every one of these passes that step, fails as an unexpected pass, and is to be replaced
by the real test (issue 18 brings a Python NRI test plugin in tests/support/).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support.daemon import Daemon

pytestmark = [
    pytest.mark.root,
    pytest.mark.xfail(strict=True, raises=OSError, reason="NRI is not implemented yet (issue 18)"),
]


def nri_socket(daemon: Daemon) -> Path:
    """Where this suite's daemon is to serve NRI plugins ([nri] socket_path in its config)."""
    return daemon.dir / "nri" / "nri.sock"


def connect_plugin(daemon: Daemon) -> None:
    """A plugin's first step: connect to the daemon's NRI socket (OSError while nothing serves it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as plugin:
        plugin.settimeout(5)
        plugin.connect(str(nri_socket(daemon)))


def test_nri_pod_events_in_order(daemon: Daemon) -> None:
    """[k8s.io] NRI pod sandbox lifecycle should receive RunPodSandbox, StopPodSandbox, and
    RemovePodSandbox in strict order with correct metadata [Serial]

    A plugin sees Run, Stop and Remove of one pod, in that order, with its ID, name, namespace and UID.
    """
    connect_plugin(daemon)


def test_nri_container_events_in_order(daemon: Daemon) -> None:
    """[k8s.io] NRI container lifecycle should receive CreateContainer, StartContainer, StopContainer,
    and RemoveContainer in strict order with correct metadata [Serial]

    A plugin sees Create, Start, Stop and Remove of one container, in order, with its ID and name.
    """
    connect_plugin(daemon)


def test_nri_failed_container_events(daemon: Daemon) -> None:
    """[k8s.io] NRI container lifecycle (failed container) should receive CreateContainer,
    StartContainer, StopContainer, and RemoveContainer for a container that exits with a non-zero code [Serial]

    A container whose command exits non-zero produces StopContainer without a StopContainer call.
    """
    connect_plugin(daemon)


def test_nri_run_pod_hidden_while_hook_runs(daemon: Daemon) -> None:
    """[k8s.io] NRI RunPodSandbox contract should not expose sandbox while RunPodSandbox hook is in progress [Serial]

    While the plugin holds its RunPodSandbox hook, the pod is neither listed nor has a status.
    """
    connect_plugin(daemon)


def test_nri_no_workload_before_run_pod_hook_completes(daemon: Daemon) -> None:
    """[k8s.io] NRI RunPodSandbox contract should not start workload containers until
    RunPodSandbox hook completes [Serial]

    CreateContainer in a pod whose RunPodSandbox hook still runs fails; it succeeds once the hook returns.
    """
    connect_plugin(daemon)


def test_nri_run_pod_hook_error_cleans_up_and_allows_retry(daemon: Daemon) -> None:
    """[k8s.io] NRI RunPodSandbox contract should fail RunPodSandbox and clean up when the NRI hook
    errors, then allow retry [Serial]

    A RunPodSandbox hook error fails the call and leaves no pod; the same config runs once the hook passes.
    """
    connect_plugin(daemon)


def test_nri_stop_pod_stops_containers_before_hook(daemon: Daemon) -> None:
    """[k8s.io] NRI StopPodSandbox contract should stop all workload containers and keep sandbox
    accessible while StopPodSandbox hook is in progress [Serial]

    When the StopPodSandbox hook runs, the pod's containers have exited and the pod still has a status.
    """
    connect_plugin(daemon)


def test_nri_stop_pod_is_idempotent_and_final(daemon: Daemon) -> None:
    """[k8s.io] NRI StopPodSandbox contract should handle StopPodSandbox idempotently and never reuse sandbox [Serial]

    A second StopPodSandbox sends no second event; CreateContainer in the stopped pod fails and sends none.
    """
    connect_plugin(daemon)


def test_nri_create_container_hidden_while_hook_runs(daemon: Daemon) -> None:
    """[k8s.io] NRI CreateContainer contract should not expose container while CreateContainer hook
    is in progress [Serial]

    While the plugin holds its CreateContainer hook, the container is neither listed nor has a status.
    """
    connect_plugin(daemon)


def test_nri_create_container_hook_error_leaks_nothing(daemon: Daemon) -> None:
    """[k8s.io] NRI CreateContainer contract should fail CreateContainer when the NRI hook errors,
    leak nothing, and allow retry [Serial]

    A CreateContainer hook error fails the call and leaves no container; the same name works on retry.
    """
    connect_plugin(daemon)


def test_nri_late_plugin_is_synchronized(daemon: Daemon) -> None:
    """[k8s.io] NRI plugin synchronization should synchronize a newly connected plugin with existing
    pods and containers [Serial]

    A plugin connecting after a pod and a container exist receives both in Synchronize.
    """
    connect_plugin(daemon)


def test_nri_synchronize_sees_every_container(daemon: Daemon) -> None:
    """[k8s.io] NRI plugin synchronization should receive information about all containers without
    the race condition during initialization [Serial]

    Containers created before, during and after a late plugin's Synchronize each reach it, there or as an event.
    """
    connect_plugin(daemon)


def test_nri_container_created_during_synchronize_is_not_lost(daemon: Daemon) -> None:
    """[k8s.io] NRI plugin synchronization should receive a callback for container created during
    the Synchronize call [Serial]

    A container created while the plugin holds Synchronize open reaches the plugin afterwards.
    """
    connect_plugin(daemon)
