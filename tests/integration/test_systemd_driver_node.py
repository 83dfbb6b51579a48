"""The systemd cgroup driver on a real systemd node, through the daemon's CRI API.

A container's process lives in `crishim-<id>.scope` and its conmon in
`crishim-conmon-<id>.scope`, both in the pod's slice, whether the kubelet names the
slice (`kubepods-burstable-pod<uid>.slice`) or critest gives a path (`/test.slice`).
Once the pod is stopped and removed, systemd holds no unit naming any of its IDs and
no failed unit of ours, whatever way its containers ended (exit, kill, OOM).
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from crishim.cgroups import systemd_scope
from crishim.cgroups.errors import FailedPrecondition
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import (
    container_config,
    pull_test_image,
    remove_pod,
    run_pod_sandbox,
    start_container,
    wait_exited,
)
from tests.support.daemon import Daemon, running_daemon
from tests.support.images import TestImages
from tests.support.node import (
    conmon_pid,
    container_info,
    failed_units,
    installed_runtime,
    pid1_is_systemd,
    process_cgroup,
    sandbox_pid,
    slice_active,
    stop_units,
    systemctl,
    wait_until_no_units,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not pid1_is_systemd(), reason="PID 1 is not systemd: run it in scripts/node-vm"),
]

MiB = 1 << 20
SLEEP = ["sleep", "1000"]
HOG = ["sh", "-c", "x=a; while :; do x=$x$x; done"]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon('cgroup_driver = "systemd"\n') as d:
        yield d


@pytest.fixture(scope="module")
def image(daemon: Daemon, test_images: TestImages) -> str:
    return pull_test_image(daemon, test_images)


@pytest.fixture(scope="module", params=["runc", "crun"])
def handler(request: pytest.FixtureRequest) -> str:
    return installed_runtime(request.param)


@dataclass
class Pod:
    id: str
    config: pb.PodSandboxConfig
    slice_path: str  # the slice's cgroup, e.g. /kubepods.slice/kubepods-burstable.slice/...
    containers: list[str] = field(default_factory=list)
    removed: bool = False


@contextlib.contextmanager
def pod_in_slice(
    daemon: Daemon, name: str, handler: str, uid: str, cgroup_parent: str, slice_path: str, made: list[str]
) -> Iterator[Pod]:
    """A pod under `cgroup_parent`; afterwards removed (unless the test did) and the `made` units stopped."""
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace="test"),
        log_directory=str(daemon.dir / "logs" / name),
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
    )
    pod = Pod(run_pod_sandbox(daemon, config, handler), config, slice_path)
    try:
        yield pod
    finally:
        try:
            if not pod.removed:
                remove_pod(daemon, pod.id)
        finally:
            stop_units(*made)


@pytest.fixture
def kubelet_pod(daemon: Daemon, handler: str) -> Iterator[Pod]:
    """A pod in the slice the kubelet makes for it: the uid's dashes become underscores."""
    uid = str(uuid.uuid4())
    slice_name = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
    made = [u for u in ("kubepods-burstable.slice", "kubepods.slice") if not slice_active(u)]
    slice_path = f"/kubepods.slice/kubepods-burstable.slice/{slice_name}"
    # The kubelet removes its pod slices; we stand in for it.
    with pod_in_slice(daemon, f"sd-{handler}", handler, uid, slice_name, slice_path, [slice_name, *made]) as pod:
        yield pod


@pytest.fixture
def critest_pod(daemon: Daemon, handler: str) -> Iterator[Pod]:
    """critest's cgroup parent for the systemd driver is the path /test.slice."""
    made = [] if slice_active("test.slice") else ["test.slice"]
    with pod_in_slice(
        daemon, f"sd-critest-{handler}", handler, str(uuid.uuid4()), "/test.slice", "/test.slice", made
    ) as pod:
        yield pod


def start(daemon: Daemon, pod: Pod, name: str, image: str, cmd: list[str], **resources: object) -> str:
    linux = pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(**resources))  # type: ignore[arg-type]
    cid = start_container(daemon, pod.id, pod.config, container_config(name, image, cmd, linux=linux))
    pod.containers.append(cid)
    return cid


def assert_scopes(daemon: Daemon, pod: Pod, cid: str) -> None:
    """The container's init in crishim-<cid>.scope, its conmon in crishim-conmon-<cid>.scope, same slice."""
    info = container_info(daemon, cid)
    assert process_cgroup(int(info["pid"])) == f"{pod.slice_path}/crishim-{cid}.scope"  # type: ignore[call-overload]
    assert process_cgroup(conmon_pid(Path(str(info["bundle"])))) == f"{pod.slice_path}/crishim-conmon-{cid}.scope"
    assert systemctl("is-active", f"crishim-{cid}.scope").strip() == "active"
    assert systemctl("show", "-P", "Slice", f"crishim-{cid}.scope").strip() == pod.slice_path.rsplit("/", 1)[-1]


def remove_and_check_units(daemon: Daemon, pod: Pod) -> None:
    remove_pod(daemon, pod.id)
    pod.removed = True
    ids = [pod.id, *pod.containers]
    assert wait_until_no_units(*ids) == [], "systemd still holds units of the removed pod"
    ours = [line for line in failed_units() if "crishim" in line]
    assert ours == [], f"failed units left behind: {ours}"


def parent_pid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("PPid:")))


def test_kubelet_slice_holds_container_and_conmon_scopes(daemon: Daemon, kubelet_pod: Pod, image: str) -> None:
    cid = start(daemon, kubelet_pod, "sleeper", image, SLEEP, memory_limit_in_bytes=64 * MiB)
    assert_scopes(daemon, kubelet_pod, cid)
    sid = kubelet_pod.id
    # The pod's PID namespace holder and its unshare: the scope a pause container had, and no conmon.
    holder = sandbox_pid(daemon, sid)
    for pid in (holder, parent_pid(holder)):
        assert process_cgroup(pid) == f"{kubelet_pod.slice_path}/crishim-{sid}.scope"
    assert not (daemon.root / "sandboxes" / sid / "conmon.pid").exists()
    remove_and_check_units(daemon, kubelet_pod)


def test_critest_path_parent_holds_the_scopes_in_its_slice(daemon: Daemon, critest_pod: Pod, image: str) -> None:
    cid = start(daemon, critest_pod, "sleeper", image, SLEEP)
    assert_scopes(daemon, critest_pod, cid)
    remove_and_check_units(daemon, critest_pod)


def test_removed_pod_leaves_no_units_however_its_containers_ended(daemon: Daemon, kubelet_pod: Pod, image: str) -> None:
    running = start(daemon, kubelet_pod, "running", image, SLEEP)
    failed = start(daemon, kubelet_pod, "failed", image, ["sh", "-c", "exit 3"])
    oom = start(daemon, kubelet_pod, "oom", image, HOG, memory_limit_in_bytes=32 * MiB,
                memory_swap_limit_in_bytes=32 * MiB)  # fmt: skip
    assert wait_exited(daemon, failed, timeout=60).exit_code == 3
    status = wait_exited(daemon, oom, timeout=120)
    assert (status.reason, status.exit_code) == ("OOMKilled", 137), status.message
    daemon.runtime.StopContainer(pb.StopContainerRequest(container_id=running, timeout=0), timeout=60)
    remove_and_check_units(daemon, kubelet_pod)


def test_start_scope_moves_a_process_and_refuses_a_taken_name() -> None:
    """cgroups.systemd_scope, the D-Bus call conmon's scope is made with: the process is in the
    scope when it returns, a second scope of the same name is refused with systemd's reason, and
    the scope goes once its process has."""
    unit = f"crishim-test-{uuid.uuid4().hex[:12]}.scope"
    first = subprocess.Popen(SLEEP)
    second = subprocess.Popen(SLEEP)
    try:
        systemd_scope.start_scope(unit, "crishim-test.slice", first.pid, "crishim scope test")
        assert process_cgroup(first.pid) == f"/crishim.slice/crishim-test.slice/{unit}"
        with pytest.raises(FailedPrecondition, match="UnitExists"):
            systemd_scope.start_scope(unit, "crishim-test.slice", second.pid, "crishim scope test")
        assert not process_cgroup(second.pid).endswith(unit)
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
    assert wait_until_no_units(unit) == [], "the scope outlived its process"
    stop_units("crishim-test.slice")
