"""critest "PodSandbox": run, stop, remove, attributes and sysctls of pod sandboxes."""

from __future__ import annotations

import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root


def _listed(daemon: Daemon, pod_id: str) -> bool:
    return any(p.id == pod_id for p in cri.list_pods(daemon, pb.PodSandboxFilter(id=pod_id)))


def test_run_pod_is_ready_and_listed(daemon: Daemon) -> None:
    """[k8s.io] PodSandbox runtime should support basic operations on PodSandbox
    runtime should support running PodSandbox [Conformance]"""
    with critest.pod(daemon, prefix="PodSandbox-for-create-test-") as (pod_id, _):
        assert cri.pod_status(daemon, pod_id).status.state == pb.SANDBOX_READY
        assert _listed(daemon, pod_id)


def test_stopped_pod_is_not_ready(daemon: Daemon) -> None:
    """[k8s.io] PodSandbox runtime should support basic operations on PodSandbox
    runtime should support stopping PodSandbox [Conformance]"""
    with critest.pod(daemon, prefix="PodSandbox-for-test-stop-") as (pod_id, _):
        cri.stop_pod(daemon, pod_id)
        assert cri.pod_status(daemon, pod_id).status.state == pb.SANDBOX_NOTREADY


def test_removed_pod_is_not_listed(daemon: Daemon) -> None:
    """[k8s.io] PodSandbox runtime should support basic operations on PodSandbox
    runtime should support removing PodSandbox [Conformance]"""
    with critest.pod(daemon, prefix="PodSandbox-for-test-remove-") as (pod_id, _):
        cri.stop_pod(daemon, pod_id)
        cri.remove_pod_sandbox(daemon, pod_id)
        assert not _listed(daemon, pod_id)


def test_pod_status_and_list_preserve_metadata_labels_annotations(daemon: Daemon) -> None:
    """[k8s.io] PodSandbox runtime should support basic operations on PodSandbox
    runtime should support preserving PodSandbox attributes [Conformance]"""
    config = critest.pod_config(daemon, "PodSandbox-with-attributes-")
    md = config.metadata
    labels = {
        "foo": "bar",
        "io.kubernetes.pod.name": md.name,
        "io.kubernetes.pod.namespace": md.namespace,
        "io.kubernetes.pod.uid": md.uid,
    }
    annotations = {"abc": "def"}
    config.labels.update(labels)
    config.annotations.update(annotations)
    with critest.pod(daemon, config) as (pod_id, _):
        status = cri.pod_status(daemon, pod_id).status
        pods = cri.list_pods(daemon, pb.PodSandboxFilter(id=pod_id))
        assert len(pods) == 1
        for got in (status, pods[0]):
            assert (got.metadata.name, got.metadata.uid, got.metadata.namespace, got.metadata.attempt) == (
                md.name,
                md.uid,
                md.namespace,
                md.attempt,
            )
            assert labels.items() <= dict(got.labels).items()
            assert annotations.items() <= dict(got.annotations).items()


def _check_sysctl(daemon: Daemon, sysctls: dict[str, str], prefix: str, path: str, expected: str) -> None:
    config = critest.pod_config(daemon, "pod-sandbox-with-sysctls-", sysctls=sysctls)
    config.labels.clear()  # critest's sysctl pods carry no labels
    with critest.pod(daemon, config) as (pod_id, cfg):
        cid = critest.create_default_container(daemon, pod_id, cfg, prefix)
        cri.start(daemon, cid)
        resp = cri.exec_sync(daemon, cid, ["cat", path])
        assert resp.exit_code == 0, resp.stderr
        assert resp.stdout.decode().strip() == expected


def test_safe_sysctl_is_set_in_pod(daemon: Daemon) -> None:
    """[k8s.io] PodSandbox runtime should support sysctls should support safe sysctls"""
    _check_sysctl(
        daemon, {"kernel.shm_rmid_forced": "1"}, "container-shm-rmid-forced", "/proc/sys/kernel/shm_rmid_forced", "1"
    )


def test_unsafe_sysctl_is_set_in_pod(daemon: Daemon) -> None:
    """[k8s.io] PodSandbox runtime should support sysctls should support unsafe sysctls"""
    _check_sysctl(
        daemon, {"fs.mqueue.msg_max": "100"}, "container-fs-mqueue-msg-max", "/proc/sys/fs/mqueue/msg_max", "100"
    )
