"""`crishim serve` as an operator and a kubelet meet it: socket, limits, status, shutdown."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import (
    code_of,
    container_config,
    eventually,
    exec_output,
    pull,
    remove_pod,
    run_pod,
    start_container,
)
from tests.support.daemon import Daemon, running_daemon

pytestmark = pytest.mark.root


def test_version_names_crishim_and_cri_v1(live_daemon: Daemon) -> None:
    version = live_daemon.runtime.Version(pb.VersionRequest(), timeout=5)
    assert version.runtime_name == "crishim"
    assert version.runtime_api_version == "v1"
    assert version.runtime_version


def test_status_reports_ready_runtime_handlers_and_features(live_daemon: Daemon) -> None:
    status = live_daemon.runtime.Status(pb.StatusRequest(), timeout=5)
    conditions = {c.type: c for c in status.status.conditions}
    assert conditions["RuntimeReady"].status
    assert conditions["NetworkReady"].status  # the default bridge was installed into the empty dir
    names = {h.name for h in status.runtime_handlers}
    assert {"runc", "crun", ""} <= names
    assert status.features.supplemental_groups_policy
    assert not status.info  # only verbose asks for the info map


def test_verbose_status_carries_the_effective_config(live_daemon: Daemon) -> None:
    status = live_daemon.runtime.Status(pb.StatusRequest(verbose=True), timeout=5)
    config = json.loads(status.info["config"])
    assert config["socket"] == str(live_daemon.socket)
    assert config["root"] == str(live_daemon.root)
    handlers = json.loads(status.info["handlers"])
    assert handlers["runc"]["type"] == "runc"


def test_runtime_config_reports_the_cgroup_driver(live_daemon: Daemon) -> None:
    answer = live_daemon.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=5)
    expected = pb.SYSTEMD if os.path.isdir("/run/systemd/system") else pb.CGROUPFS
    assert answer.linux.cgroup_driver == expected


def test_update_runtime_config_keeps_the_pod_cidr(live_daemon: Daemon) -> None:
    request = pb.UpdateRuntimeConfigRequest(
        runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.99.0.0/16"))
    )
    live_daemon.runtime.UpdateRuntimeConfig(request, timeout=10)
    info = live_daemon.runtime.Status(pb.StatusRequest(verbose=True), timeout=5).info
    assert json.loads(info["podCIDR"]) == "10.99.0.0/16"


def test_a_ten_mebibyte_request_is_accepted(live_daemon: Daemon) -> None:
    big = "x" * (10 * 1024 * 1024)
    request = pb.ListContainersRequest(filter=pb.ContainerFilter(label_selector={"big": big}))
    assert live_daemon.runtime.ListContainers(request, timeout=30).containers == []


def test_socket_is_mode_0660(live_daemon: Daemon) -> None:
    mode = stat.S_IMODE(os.stat(live_daemon.socket).st_mode)
    assert mode == 0o660
    assert stat.S_ISSOCK(os.stat(live_daemon.socket).st_mode)


def test_second_daemon_on_a_live_socket_is_refused(live_daemon: Daemon) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "crishim.runtime.cli", "--config", str(live_daemon.config_file), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "another daemon is serving on" in proc.stderr
    # The first daemon is unharmed.
    assert live_daemon.runtime.Version(pb.VersionRequest(), timeout=5).runtime_name == "crishim"


def test_stale_socket_file_is_replaced() -> None:
    with running_daemon(start=False) as daemon:
        daemon.socket.parent.mkdir(parents=True, exist_ok=True)
        import socket as pysocket

        stale = pysocket.socket(pysocket.AF_UNIX)
        stale.bind(str(daemon.socket))
        stale.close()  # bound, never listening: a crashed daemon's leftover
        daemon.start()
        assert daemon.runtime.Version(pb.VersionRequest(), timeout=5).runtime_name == "crishim"


@pytest.mark.parametrize(
    ("method", "request_type", "field"),
    [
        ("CheckpointPod", pb.CheckpointPodRequest, "pod_sandbox_id"),
        ("RestorePod", pb.RestorePodRequest, "checkpoint_path"),
    ],
)
def test_pod_checkpoint_rpcs_are_served_and_name_a_missing_field(
    live_daemon: Daemon, method: str, request_type: type, field: str
) -> None:
    # The last CRI calls that answered UNIMPLEMENTED: served now, an empty request is the caller's to fix.
    with pytest.raises(grpc.RpcError) as info:
        getattr(live_daemon.runtime, method)(request_type(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field} is empty"), info.value.details()


def test_network_not_ready_until_a_conflist_appears() -> None:
    with running_daemon(cni_extra="install_default = false\n") as daemon:
        conditions = {c.type: c for c in daemon.runtime.Status(pb.StatusRequest(), timeout=5).status.conditions}
        assert not conditions["NetworkReady"].status
        assert conditions["NetworkReady"].reason == "NetworkPluginNotReady"
        conf = daemon.dir / "net.d"
        conf.mkdir(exist_ok=True)
        (conf / "10-test.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "t",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cstest0",
                            "ipam": {"type": "host-local", "subnet": "10.55.0.0/24"},
                        }
                    ],
                }
            )
        )
        deadline = time.monotonic() + 10
        ready = False
        while time.monotonic() < deadline and not ready:
            status = daemon.runtime.Status(pb.StatusRequest(), timeout=5)
            ready = {c.type: c.status for c in status.status.conditions}["NetworkReady"]
            time.sleep(0.2)
        assert ready


def test_sigterm_lets_an_in_flight_call_finish_and_leaves_containers_running(test_images) -> None:
    with running_daemon() as daemon:
        image = test_images.ref("busybox:latest")
        pull(daemon, image)
        sid, pod = run_pod(daemon, "sigterm")
        cid = start_container(daemon, sid, pod, container_config("sleeper", image, ["sleep", "1000"]))
        result: dict[str, object] = {}

        def slow_exec() -> None:
            try:
                result["answer"] = daemon.runtime.ExecSync(
                    pb.ExecSyncRequest(
                        container_id=cid, cmd=["sh", "-c", "touch /tmp/in-flight; sleep 2; echo done"], timeout=20
                    ),
                    timeout=30,
                )
            except grpc.RpcError as exc:
                result["error"] = exc

        caller = threading.Thread(target=slow_exec)
        caller.start()
        # The call is in flight once its command runs in the container.
        eventually(
            lambda: exec_output(daemon, cid, ["test", "-e", "/tmp/in-flight"])[0],
            lambda code: code == 0,
            timeout=30,
            what="the slow exec running",
        )
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        caller.join(30)
        assert "error" not in result, result.get("error")
        assert result["answer"].stdout == b"done\n"  # type: ignore[attr-defined]
        assert daemon.proc.wait(30) == 0
        # The container outlived the daemon; a new daemon still sees it running.
        daemon.start()
        status = daemon.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=5).status
        assert status.state == pb.CONTAINER_RUNNING
        remove_pod(daemon, sid)


def test_malformed_ids_get_clear_codes(live_daemon: Daemon) -> None:
    rt = live_daemon.runtime
    assert code_of(rt.ContainerStatus, pb.ContainerStatusRequest(container_id="")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(rt.ContainerStatus, pb.ContainerStatusRequest(container_id="nope")) == grpc.StatusCode.NOT_FOUND
    assert (
        code_of(rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id="\x00"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert code_of(rt.RunPodSandbox, pb.RunPodSandboxRequest()) == grpc.StatusCode.INVALID_ARGUMENT
