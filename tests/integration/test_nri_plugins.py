"""NRI plugins against a live daemon: adjustments seen from inside the container, and plugins
that time out, crash or send garbage, which the daemon survives with clear errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.runtime.nri import nri_pb2

from tests.support import node
from tests.support.cri import (
    container_config,
    create_container,
    exec_checked,
    exec_output,
    list_containers,
    pull_test_image,
    refusal,
    remove_pod,
    run_pod,
    start,
)
from tests.support.daemon import Daemon, running_daemon
from tests.support.images import TestImages
from tests.support.nri_plugin import NriTestPlugin

pytestmark = [pytest.mark.root]

SLEEP = ["sleep", "3600"]


@pytest.fixture(scope="module")
def nri_daemon() -> Iterator[Daemon]:
    """A daemon with short NRI timeouts, so misbehaving plugins are found out quickly."""
    with running_daemon(nri_extra="plugin_registration_timeout = 2.0\nplugin_request_timeout = 1.0\n") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def busybox(nri_daemon: Daemon, test_images: TestImages) -> str:
    return pull_test_image(nri_daemon, test_images)


@pytest.fixture
def pod(nri_daemon: Daemon) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    sid, config = run_pod(nri_daemon, "nri-pod")
    yield sid, config
    remove_pod(nri_daemon, sid)


def plugin_for(daemon: Daemon, name: str, index: str = "50") -> NriTestPlugin:
    return NriTestPlugin(daemon.dir / "nri" / "nri.sock", name, index)


def connected_plugins(daemon: Daemon) -> list[str]:
    answer = daemon.runtime.Status(pb.StatusRequest(verbose=True), timeout=10)
    return list(json.loads(answer.info["nri"])["plugins"])


def wait_plugins(daemon: Daemon, wanted: list[str]) -> None:
    deadline = time.monotonic() + 10
    while connected_plugins(daemon) != wanted:
        assert time.monotonic() < deadline, f"connected plugins stayed {connected_plugins(daemon)}, not {wanted}"
        time.sleep(0.1)


def test_adjustments_are_seen_inside_the_container(nri_daemon: Daemon, busybox: str, pod, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note").write_text("from the plugin\n")
    memory = nri_pb2.LinuxMemory(limit=nri_pb2.OptionalInt64(value=48 << 20))
    adjustment = nri_pb2.ContainerAdjustment(
        env=[nri_pb2.KeyValue(key="NRI_ADDED", value="yes")],
        mounts=[nri_pb2.Mount(destination="/nri", type="bind", source=str(shared), options=["rbind", "ro"])],
        rlimits=[nri_pb2.POSIXRlimit(type="RLIMIT_NOFILE", hard=1234, soft=1234)],
        annotations={"nri.example/seen": "true"},
        linux=nri_pb2.LinuxContainerAdjustment(resources=nri_pb2.LinuxResources(memory=memory)),
    )
    sid, config = pod
    with plugin_for(nri_daemon, "adjuster") as plugin:
        plugin.adjustment = adjustment
        plugin.start()
        wait_plugins(nri_daemon, ["50-adjuster"])
        cid = create_container(nri_daemon, sid, config, container_config("adjusted", busybox, SLEEP))
        start(nri_daemon, cid)
        assert exec_checked(nri_daemon, cid, ["sh", "-c", "echo $NRI_ADDED"]) == "yes\n"
        assert exec_checked(nri_daemon, cid, ["cat", "/nri/note"]) == "from the plugin\n"
        assert exec_checked(nri_daemon, cid, ["sh", "-c", "ulimit -n"]) == "1234\n"
        if node.pure_v2():
            limit = node.container_cgroup(nri_daemon, cid) / "memory.max"
        else:
            limit = next(iter(Path("/sys/fs/cgroup/memory").rglob(f"{cid}/memory.limit_in_bytes")))
        assert int(limit.read_text()) == 48 << 20
        created = next(e for e in plugin.recorded() if e.kind == "PostCreateContainer" and e.container_id == cid)
        assert created.container is not None
        assert "NRI_ADDED=yes" not in created.container.env  # the CRI config's, not the spec's


def test_a_device_rule_and_a_seccomp_policy_hold_inside_the_container(nri_daemon: Daemon, busybox: str, pod) -> None:
    """A plugin opens /dev/fuse (char 10:229) by a device cgroup rule and refuses mkdir by its seccomp policy.

    The rule allows rather than denies: runc and crun re-append their default device rules
    (/dev/null and the like) after the spec's, so a deny of one of those would not hold,
    while a device outside the defaults is refused unless a rule allows it.
    """
    allow_fuse = nri_pb2.LinuxDeviceCgroup(
        allow=True, type="c", major=nri_pb2.OptionalInt64(value=10), minor=nri_pb2.OptionalInt64(value=229), access="rw"
    )
    eperm = nri_pb2.OptionalUInt32(value=1)
    policy = nri_pb2.LinuxSeccomp(
        default_action="SCMP_ACT_ALLOW",
        syscalls=[nri_pb2.LinuxSyscall(names=["mkdir", "mkdirat"], action="SCMP_ACT_ERRNO", errno_ret=eperm)],
    )
    linux = nri_pb2.LinuxContainerAdjustment(
        resources=nri_pb2.LinuxResources(devices=[allow_fuse]), seccomp_policy=policy
    )
    open_fuse = ["sh", "-c", "mknod /dev/fuse c 10 229 && : > /dev/fuse && echo opened"]
    sid, config = pod
    with plugin_for(nri_daemon, "devices") as plugin:
        plugin.start()
        wait_plugins(nri_daemon, ["50-devices"])
        plain = create_container(nri_daemon, sid, config, container_config("plain", busybox, SLEEP))
        start(nri_daemon, plain)
        plugin.adjustment = nri_pb2.ContainerAdjustment(linux=linux)
        cid = create_container(nri_daemon, sid, config, container_config("adjusted", busybox, SLEEP))
        start(nri_daemon, cid)
        code, out = exec_output(nri_daemon, plain, open_fuse)
        assert code != 0
        assert "Operation not permitted" in out
        exec_checked(nri_daemon, plain, ["mkdir", "/tmp/made"])
        assert exec_checked(nri_daemon, cid, open_fuse) == "opened\n"
        code, out = exec_output(nri_daemon, cid, ["mkdir", "/tmp/made"])
        assert code != 0
        assert "Operation not permitted" in out
        assert exec_checked(nri_daemon, cid, ["sh", "-c", "touch /tmp/file && echo ok"]) == "ok\n"


def test_a_blockio_class_is_refused_naming_the_plugin(nri_daemon: Daemon, busybox: str, pod) -> None:
    sid, config = pod
    klass = nri_pb2.LinuxResources(blockio_class=nri_pb2.OptionalString(value="throttled"))
    with plugin_for(nri_daemon, "blockio") as plugin:
        plugin.adjustment = nri_pb2.ContainerAdjustment(linux=nri_pb2.LinuxContainerAdjustment(resources=klass))
        plugin.start()
        wait_plugins(nri_daemon, ["50-blockio"])
        cfg = container_config("blockio", busybox, SLEEP)
        error = refusal(lambda: create_container(nri_daemon, sid, config, cfg))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "NRI plugin 50-blockio sets blockio class 'throttled'" in (error.details() or "")
        assert list_containers(nri_daemon, pb.ContainerFilter(pod_sandbox_id=sid)) == []
        plugin.adjustment = None
        assert create_container(nri_daemon, sid, config, cfg)  # the same name, once the plugin asks no more


def test_a_plugin_that_times_out_fails_create_once_and_is_dropped(nri_daemon: Daemon, busybox: str, pod) -> None:
    sid, config = pod
    with plugin_for(nri_daemon, "sleepy") as plugin:
        plugin.hooks["CreateContainer"] = lambda pod, container: time.sleep(3)
        plugin.start()
        wait_plugins(nri_daemon, ["50-sleepy"])
        cfg = container_config("slow", busybox, SLEEP)
        started = time.monotonic()
        error = refusal(lambda: create_container(nri_daemon, sid, config, cfg))
        assert time.monotonic() - started < 3
        assert "NRI plugin 50-sleepy: CreateContainer got no answer within 1s" in (error.details() or "")
        assert connected_plugins(nri_daemon) == []
        assert list_containers(nri_daemon, pb.ContainerFilter(pod_sandbox_id=sid)) == []
        assert create_container(nri_daemon, sid, config, cfg)  # the same name, without the plugin


def test_a_plugin_that_crashes_mid_hook_fails_the_call_clearly(nri_daemon: Daemon, busybox: str, pod) -> None:
    sid, config = pod
    plugin = plugin_for(nri_daemon, "crasher")
    reached = threading.Event()

    def hold(pod: object, container: object) -> None:
        reached.set()
        time.sleep(5)

    plugin.hooks["CreateContainer"] = hold
    plugin.start()
    wait_plugins(nri_daemon, ["50-crasher"])
    cfg = container_config("crashed", busybox, SLEEP)
    with ThreadPoolExecutor(1) as pool:
        creating = pool.submit(refusal, lambda: create_container(nri_daemon, sid, config, cfg))
        assert reached.wait(10)
        plugin.crash()
        error = creating.result(30)
    assert "NRI plugin 50-crasher" in (error.details() or "")
    assert "disconnected" in (error.details() or "")
    plugin.stop()
    assert connected_plugins(nri_daemon) == []
    assert create_container(nri_daemon, sid, config, cfg)


def send_until_hung_up(sock: socket.socket, chunks: list[bytes]) -> None:
    """Send each chunk; the daemon may hang up after any of them, which is what the test wants."""
    for chunk in chunks:
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return


def hung_up(sock: socket.socket) -> bool:
    """True when the peer closed: an orderly EOF, or a reset because it left our bytes unread."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_garbage_and_silent_plugins_leave_the_daemon_serving(nri_daemon: Daemon, busybox: str, pod) -> None:
    sid, config = pod
    nri_socket = str(nri_daemon.dir / "nri" / "nri.sock")
    with socket.socket(socket.AF_UNIX) as garbage, socket.socket(socket.AF_UNIX) as silent:
        garbage.connect(nri_socket)
        send_until_hung_up(garbage, [b"\x00\x00\x00\x02\x00\x00\x00\x10" + b"definitely not!!", b"\xff" * 64])
        silent.connect(nri_socket)
        time.sleep(2.5)  # past the registration timeout
        garbage.settimeout(5)
        assert hung_up(garbage)
        assert connected_plugins(nri_daemon) == []
        cid = create_container(nri_daemon, sid, config, container_config("after-garbage", busybox, SLEEP))
        start(nri_daemon, cid)
    with plugin_for(nri_daemon, "good") as good:
        good.start()
        wait_plugins(nri_daemon, ["50-good"])
        assert cid in good.synced_containers


def test_an_invalid_registration_is_refused(nri_daemon: Daemon) -> None:
    with plugin_for(nri_daemon, "bad name!", "7") as plugin:
        with pytest.raises(Exception, match="invalid plugin name"):
            plugin.start(timeout=10)
    assert connected_plugins(nri_daemon) == []


def test_plugins_are_told_in_index_order_and_conflicts_fail_create(nri_daemon: Daemon, busybox: str, pod) -> None:
    sid, config = pod
    order: list[str] = []
    first, second = plugin_for(nri_daemon, "first", "10"), plugin_for(nri_daemon, "second", "20")
    with second, first:
        second.hooks["CreateContainer"] = lambda pod, container: order.append("20-second")
        first.hooks["CreateContainer"] = lambda pod, container: order.append("10-first")
        second.start()
        first.start()
        wait_plugins(nri_daemon, ["10-first", "20-second"])
        create_container(nri_daemon, sid, config, container_config("ordered", busybox, SLEEP))
        assert order == ["10-first", "20-second"]
        for plugin, value in ((first, "1"), (second, "2")):
            plugin.adjustment = nri_pb2.ContainerAdjustment(env=[nri_pb2.KeyValue(key="CLASH", value=value)])
        error = refusal(lambda: create_container(nri_daemon, sid, config, container_config("clash", busybox, SLEEP)))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "10-first and 20-second both adjust environment variable 'CLASH'" in (error.details() or "")


def test_doctor_and_status_show_nri(nri_daemon: Daemon) -> None:
    from crishim.runtime.config import load_config
    from crishim.runtime.nri.report import nri_summary

    with plugin_for(nri_daemon, "shown") as plugin:
        plugin.start()
        wait_plugins(nri_daemon, ["50-shown"])
        ok, line = nri_summary(load_config(nri_daemon.config_file))
        assert ok
        assert f"socket {nri_daemon.dir}/nri/nri.sock; connected plugins: 50-shown" in line


PREINSTALLED = """#!{python}
import os, sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.support.nri_plugin import NriTestPlugin

out = Path({out!r})
env = os.environ
plugin = NriTestPlugin(None, env["NRI_PLUGIN_NAME"], env["NRI_PLUGIN_IDX"], fd=int(env["NRI_PLUGIN_SOCKET"]))
plugin.hooks["RunPodSandbox"] = lambda pod: out.open("a").write("run " + pod.name + "\\n")
plugin.start(wait_ready=False)
while plugin.configure_request is None:
    time.sleep(0.05)
out.open("a").write("config " + plugin.configure_request.config + "\\n")
while plugin.connected:
    time.sleep(0.2)
"""


def test_preinstalled_plugins_start_with_the_daemon_and_get_their_config(tmp_path: Path) -> None:
    import sys

    out = tmp_path / "events"
    with running_daemon(start=False) as daemon:
        plugins, conf = daemon.dir / "nri" / "plugins", daemon.dir / "nri" / "conf.d"
        plugins.mkdir(parents=True)
        conf.mkdir(parents=True)
        script = plugins / "05-recorder"
        repo = str(Path(__file__).resolve().parents[2])
        script.write_text(PREINSTALLED.format(python=sys.executable, repo=repo, out=str(out)))
        script.chmod(0o755)
        (conf / "recorder.conf").write_text("threshold: 3")
        daemon.start()
        wait_plugins(daemon, ["05-recorder"])
        sid, _ = run_pod(daemon, "seen-by-recorder")
        remove_pod(daemon, sid)
        lines = out.read_text().splitlines()
        assert lines[0] == "config threshold: 3"
        assert "run seen-by-recorder" in lines


def memory_limit_file(daemon: Daemon, cid: str) -> Path:
    if node.pure_v2():
        return node.container_cgroup(daemon, cid) / "memory.max"
    return next(iter(Path("/sys/fs/cgroup/memory").rglob(f"{cid}/memory.limit_in_bytes")))


def test_updates_reach_plugins_and_plugins_can_update(nri_daemon: Daemon, busybox: str, pod) -> None:
    sid, config = pod
    with plugin_for(nri_daemon, "resizer") as plugin:
        plugin.start()
        wait_plugins(nri_daemon, ["50-resizer"])
        resources = pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20)
        cfg = container_config("resized", busybox, SLEEP, linux=pb.LinuxContainerConfig(resources=resources))
        cid = create_container(nri_daemon, sid, config, cfg)
        start(nri_daemon, cid)
        bigger = pb.LinuxContainerResources(memory_limit_in_bytes=80 << 20)
        nri_daemon.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=cid, linux=bigger))
        events = plugin.wait_for(lambda ev: "PostUpdateContainer" in [e.kind for e in ev if e.container_id == cid])
        assert [e.kind for e in events if e.container_id == cid][-2:] == ["UpdateContainer", "PostUpdateContainer"]
        assert int(memory_limit_file(nri_daemon, cid).read_text()) == 80 << 20
        memory = nri_pb2.LinuxMemory(limit=nri_pb2.OptionalInt64(value=96 << 20))
        update = nri_pb2.ContainerUpdate(
            container_id=cid, linux=nri_pb2.LinuxContainerUpdate(resources=nri_pb2.LinuxResources(memory=memory))
        )
        missing = nri_pb2.ContainerUpdate(container_id="no-such-container")
        answer = plugin.update_containers(nri_pb2.UpdateContainersRequest(update=[update, missing]))
        assert [u.container_id for u in answer.failed] == ["no-such-container"]
        assert int(memory_limit_file(nri_daemon, cid).read_text()) == 96 << 20
        pod_update = pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=sid, resources=bigger)
        nri_daemon.runtime.UpdatePodSandboxResources(pod_update, timeout=30)
        events = plugin.wait_for(lambda ev: "PostUpdatePodSandbox" in [e.kind for e in ev if e.pod_id == sid])
        assert [e.kind for e in events if e.pod_id == sid][-2:] == ["UpdatePodSandbox", "PostUpdatePodSandbox"]
