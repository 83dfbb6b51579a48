"""AppArmor on a node that has it: the daemon loads crishim-default and containers run under it.

Each container reads its own label from /proc/self/attr/current (and its init's
from /proc/1/attr/current) through ExecSync; the mount check shows the profile
denying what capabilities alone would allow.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.oci.apparmor import DEFAULT_PROFILE_NAME, apparmor_enabled, loaded_profiles

from tests.support.cri import container_config, exec_checked, exec_output, remove_pod, run_pod, start_container
from tests.support.daemon import Daemon
from tests.support.node import installed_runtime

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not apparmor_enabled(), reason="AppArmor is not enabled here (/sys/module/apparmor/parameters/enabled)"
    ),
]

SLEEP = ["sleep", "1000"]
Pod = tuple[str, pb.PodSandboxConfig]
UNCONFINED = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)


def label(daemon: Daemon, cid: str, pid: str = "self") -> str:
    return exec_checked(daemon, cid, ["cat", f"/proc/{pid}/attr/current"]).strip().rstrip("\0")


def pid_of(daemon: Daemon, cid: str, comm: str) -> str:
    scan = f'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = {comm} ] && echo ${{p#/proc/}}; done; true'
    pids = exec_checked(daemon, cid, ["sh", "-c", scan]).split()
    assert pids, f"no {comm} process in the container"
    return pids[0]


@pytest.fixture(scope="module", params=["runc", "crun"])
def pod(request: pytest.FixtureRequest, live_daemon: Daemon) -> Iterator[Pod]:
    handler = installed_runtime(request.param)
    # Privileged, so that one of its containers may be.
    privileged = pb.LinuxSandboxSecurityContext(privileged=True)
    linux = pb.LinuxPodSandboxConfig(security_context=privileged)
    sid, config = run_pod(live_daemon, f"apparmor-{handler}", handler=handler, linux=linux)
    yield sid, config
    remove_pod(live_daemon, sid)


def start(daemon: Daemon, pod: Pod, name: str, image: str, **sc: object) -> str:
    sid, config = pod
    linux = pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**sc))  # type: ignore[arg-type]
    return start_container(daemon, sid, config, container_config(name, image, SLEEP, linux=linux))


def test_daemon_loads_the_default_profile(live_daemon: Daemon) -> None:
    assert DEFAULT_PROFILE_NAME in loaded_profiles()
    record = live_daemon.dir / "run" / "apparmor" / DEFAULT_PROFILE_NAME
    assert f"profile {DEFAULT_PROFILE_NAME} " in Path(record).read_text()


def test_container_without_a_profile_runs_under_the_default(live_daemon: Daemon, pod: Pod, busybox: str) -> None:
    cid = start(live_daemon, pod, "default", busybox)
    assert label(live_daemon, cid) == f"{DEFAULT_PROFILE_NAME} (enforce)"
    # The container's own process too, not only what ExecSync starts. (PID 1 is the pod's
    # PID namespace holder here, which AppArmor does not confine: the pod shares one PID namespace.)
    assert label(live_daemon, cid, pid_of(live_daemon, cid, "sleep")) == f"{DEFAULT_PROFILE_NAME} (enforce)"


def test_runtime_default_asked_for_is_the_default(live_daemon: Daemon, pod: Pod, busybox: str) -> None:
    default = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    cid = start(live_daemon, pod, "runtime-default", busybox, apparmor=default)
    assert label(live_daemon, cid) == f"{DEFAULT_PROFILE_NAME} (enforce)"


def test_unconfined_container_is_unconfined(live_daemon: Daemon, pod: Pod, busybox: str) -> None:
    cid = start(live_daemon, pod, "unconfined", busybox, apparmor=UNCONFINED)
    assert label(live_daemon, cid) == "unconfined"


def test_privileged_container_is_unconfined(live_daemon: Daemon, pod: Pod, busybox: str) -> None:
    cid = start(live_daemon, pod, "privileged", busybox, privileged=True)
    assert label(live_daemon, cid) == "unconfined"


def test_default_profile_denies_mount_that_capabilities_allow(live_daemon: Daemon, pod: Pod, busybox: str) -> None:
    mount = ["sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs t /tmp/m"]
    admin = pb.Capability(add_capabilities=["SYS_ADMIN"])
    confined = start(live_daemon, pod, "mount-default", busybox, capabilities=admin, seccomp=UNCONFINED)
    code, out = exec_output(live_daemon, confined, mount)
    assert code != 0, "mount succeeded under crishim-default"
    assert "denied" in out.lower(), out
    free = start(
        live_daemon, pod, "mount-unconfined", busybox, capabilities=admin, seccomp=UNCONFINED, apparmor=UNCONFINED
    )
    code, out = exec_output(live_daemon, free, mount)
    assert code == 0, out
