"""CheckpointContainer (KEP-2008) on real runc, conmon and CRIU.

The refusals run on every node. The checkpoint itself needs a CRIU that passes
`criu check` on the running kernel: Debian's criu 3.17.1 does on the node VM's
6.1 kernel and fails elsewhere (a 6.18 kernel's vdso), so those tests skip with
CRIU's own reason where it fails, and the test where the check fails runs there.
So do the dump CRIU refuses (a deleted file over its ghost limit), the dump that
overruns its timeout and the daemon killed mid-dump: both on a container holding
512 MiB of resident memory, whose dump is long for real. Status' per-handler
checkpoint answer is checked on every node.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from crishim.cgroups.detect import CgroupVersion
from crishim.cgroups.stats import host_layout
from crishim.cri_api import api_pb2 as pb
from crishim.oci.mounttable import mount_points
from crishim.oci.processes import alive
from crishim.runtime.checkpoint import freeze

from tests.support.cri import (
    container_config,
    container_status,
    create_container,
    eventually,
    exec_checked,
    exec_output,
    kubelet_pod_linux,
    pull_test_image,
    refusal,
    remove_container,
    remove_pod,
    rpc_code,
    run_pod,
    start,
    start_container,
    stop,
    stop_pod,
)
from tests.support.daemon import Daemon, running_daemon
from tests.support.images import TestImages
from tests.support.node import container_cgroup, container_pid, sandbox_pid

pytestmark = pytest.mark.root

CHECKPOINT_TIMEOUT = 120  # seconds, the request's own timeout
CALL_TIMEOUT = CHECKPOINT_TIMEOUT + 30
# Counts in a file of its writable layer and in its log; keeps a file and deletes one of the image.
# /count is renamed into place, so a checkpoint never catches it truncated and empty.
COUNTER = (
    "echo before > /kept.txt; rm /etc/group; i=0; "
    "while true; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; echo count $i; sleep 0.1; done"
)
ARCHIVE_MEMBERS = {
    "checkpoint",
    "config.dump",
    "spec.dump",
    "rootfs-diff.tar",
    "deleted.files",
    "container.log",
    "stats-dump",
}
GO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


@functools.cache
def criu_check() -> tuple[bool, str]:
    """Whether `criu check` passes here, and otherwise CRIU's first error line."""
    criu = shutil.which("criu")
    if criu is None:
        return False, "criu is not installed"
    run = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=60, check=False)
    if run.returncode == 0:
        return True, ""
    lines = [line.strip() for line in (run.stderr + run.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    return False, (errors or lines or ["no output"])[0]


def needs_criu() -> None:
    ok, reason = criu_check()
    if not ok:
        pytest.skip(f"criu check fails on this kernel: {reason}")


def _checkpoint(daemon: Daemon, cid: str, location: str, timeout: int = CHECKPOINT_TIMEOUT) -> None:
    request = pb.CheckpointContainerRequest(container_id=cid, location=location, timeout=timeout)
    daemon.runtime.CheckpointContainer(request, timeout=CALL_TIMEOUT)


def _count(daemon: Daemon, cid: str) -> int:
    return int(exec_checked(daemon, cid, ["cat", "/count"]).strip() or 0)


def _wait_counting(daemon: Daemon, cid: str, timeout: float = 30.0) -> None:
    """Until /count exists (a container with work before its count: reading it earlier fails)."""
    eventually(
        lambda: exec_output(daemon, cid, ["cat", "/count"])[0], lambda code: code == 0,
        timeout=timeout, interval=0.2, what="the container to count",
    )  # fmt: skip


def _bundle(daemon: Daemon, cid: str) -> Path:
    request = pb.ContainerStatusRequest(container_id=cid, verbose=True)
    info = json.loads(daemon.runtime.ContainerStatus(request, timeout=30).info["info"])
    return Path(info["bundle"])


@pytest.fixture(scope="module")
def pod(live_daemon: Daemon) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    # CRIU through runc (crun lacks it); a pod as the kubelet makes it, so one without a pause process.
    sid, config = run_pod(live_daemon, "checkpoint", handler="runc", linux=kubelet_pod_linux())
    yield sid, config
    remove_pod(live_daemon, sid)


@pytest.fixture(scope="module")
def counter(live_daemon: Daemon, busybox: str, pod: tuple[str, pb.PodSandboxConfig]) -> str:
    sid, config = pod
    cid = start_container(live_daemon, sid, config, container_config("counter", busybox, ["sh", "-c", COUNTER]))
    eventually(lambda: _count(live_daemon, cid), lambda n: n >= 3, what="the counter to count")
    return cid


# -- refusals, on every node --------------------------------------------------------------------


def test_unknown_container_is_not_found(live_daemon: Daemon, tmp_path: Path) -> None:
    error = refusal(lambda: _checkpoint(live_daemon, "f" * 64, str(tmp_path / "c.tar")))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert not (tmp_path / "c.tar").exists()


def test_container_not_running_is_refused(
    live_daemon: Daemon, busybox: str, pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path
) -> None:
    sid, config = pod
    cid = create_container(live_daemon, sid, config, container_config("created", busybox, ["sleep", "60"]))
    error = refusal(lambda: _checkpoint(live_daemon, cid, str(tmp_path / "c.tar")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "CREATED, not RUNNING" in error.details()
    assert container_status(live_daemon, cid).state == pb.CONTAINER_CREATED
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing directory", "symlink", "relative", "directory"])
def test_unusable_location_is_invalid_argument(live_daemon: Daemon, counter: str, tmp_path: Path, kind: str) -> None:
    location = {
        "missing directory": str(tmp_path / "absent" / "c.tar"),
        "symlink": str(tmp_path / "link.tar"),
        "relative": "c.tar",
        "directory": str(tmp_path / "dir.tar"),
    }[kind]
    if kind == "symlink":
        (tmp_path / "link.tar").symlink_to(tmp_path / "target.tar")
    if kind == "directory":
        (tmp_path / "dir.tar").mkdir()
    error = refusal(lambda: _checkpoint(live_daemon, counter, location))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "location" in error.details()
    assert not (tmp_path / "target.tar").exists()
    assert container_status(live_daemon, counter).state == pb.CONTAINER_RUNNING


def test_handler_without_criu_is_refused_naming_it(live_daemon: Daemon, busybox: str, tmp_path: Path) -> None:
    sid, config = run_pod(live_daemon, "checkpoint-crun", handler="crun")
    try:
        cid = start_container(live_daemon, sid, config, container_config("app", busybox, ["sleep", "600"]))
        error = refusal(lambda: _checkpoint(live_daemon, cid, str(tmp_path / "c.tar")))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert "runtime handler 'crun' cannot checkpoint" in error.details()
        assert container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING
        assert list(tmp_path.iterdir()) == []
    finally:
        remove_pod(live_daemon, sid)


def test_failing_criu_check_is_failed_precondition_with_criu_reason(
    live_daemon: Daemon, counter: str, tmp_path: Path
) -> None:
    ok, _ = criu_check()
    if ok:
        pytest.skip("criu check passes here: the refusal for a failing CRIU cannot happen")
    error = refusal(lambda: _checkpoint(live_daemon, counter, str(tmp_path / "c.tar")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert error.details().startswith("checkpoint is unavailable on this node: ")
    # CRIU's own words (which vdso error it meets varies from one run to the next on a 6.18 kernel).
    assert "criu check failed: Error (criu/" in error.details()
    assert list(tmp_path.iterdir()) == []
    assert container_status(live_daemon, counter).state == pb.CONTAINER_RUNNING
    assert not list(_bundle(live_daemon, counter).glob(".checkpoint-*"))


def test_verbose_status_says_per_handler_whether_checkpoint_works_and_why_not(live_daemon: Daemon) -> None:
    def checkpoint_entries() -> dict[str, dict[str, Any]]:
        info = live_daemon.runtime.Status(pb.StatusRequest(verbose=True), timeout=30).info
        return {name: handler["checkpoint"] for name, handler in json.loads(info["handlers"]).items()}

    # null until a first `criu check` finishes (Status does not wait for a slow one).
    entries = eventually(
        checkpoint_entries, lambda found: found["runc"]["available"] is not None, what="criu check to finish"
    )
    runc, crun = entries["runc"], entries["crun"]
    ok, _ = criu_check()
    if ok:
        assert runc == {"available": True, "reason": ""}
    else:
        assert runc["available"] is False
        assert "criu check failed: Error (criu/" in runc["reason"], runc  # CRIU's own words
    assert crun["available"] is False
    crun_version = subprocess.run(["crun", "--version"], capture_output=True, text=True, check=True).stdout
    if "+CRIU" in crun_version.split():
        assert crun["reason"] == "crun checkpoint is not supported by crishim yet; use runc", crun
    else:
        assert "is built without CRIU" in crun["reason"], crun


def test_a_freeze_through_cgroup_freeze_is_what_runc_reports_paused(live_daemon: Daemon, counter: str) -> None:
    """On cgroup v2 a checkpoint freezes the container by writing its cgroup.freeze (freeze.py) where
    `runc pause` would: found from the spec's cgroupsPath as runc finds it, paused in runc's eyes,
    and running (counting) again once thawed."""
    if host_layout().version is not CgroupVersion.V2:
        pytest.skip("cgroup v1 or hybrid: a checkpoint pauses the container through `runc pause`")
    request = pb.ContainerStatusRequest(container_id=counter, verbose=True)
    spec = json.loads(live_daemon.runtime.ContainerStatus(request, timeout=30).info["info"])["runtimeSpec"]
    driver = "systemd" if ":" in spec["linux"]["cgroupsPath"] else "cgroupfs"
    directory = freeze.v2_cgroup_dir(spec["linux"]["cgroupsPath"], driver)
    assert directory == container_cgroup(live_daemon, counter)
    runc = ["runc", "--root", str(live_daemon.dir / "run" / "runc"), "state", counter]

    def runc_status() -> str:
        return str(json.loads(subprocess.run(runc, capture_output=True, text=True, check=True).stdout)["status"])

    assert freeze.freeze_cgroup(directory)
    try:
        assert runc_status() == "paused"
    finally:
        freeze.thaw_cgroup(directory)
    assert runc_status() == "running"
    before = _count(live_daemon, counter)
    eventually(lambda: _count(live_daemon, counter), lambda n: n > before, what="the counter to go on once thawed")


# -- the checkpoint, where CRIU works ------------------------------------------------------------


def test_counter_is_checkpointed_and_keeps_counting(live_daemon: Daemon, counter: str, tmp_path: Path) -> None:
    needs_criu()
    location = tmp_path / "checkpoint-counter.tar"
    _checkpoint(live_daemon, counter, str(location))

    # One archive, nothing half-written beside it, no staging left in the container's directory.
    assert [p.name for p in tmp_path.iterdir()] == [location.name]
    assert not list(_bundle(live_daemon, counter).glob(".checkpoint-*"))
    assert _stage_mounts(_bundle(live_daemon, counter)) == []  # nor its tmpfs (memstage.py)
    with tarfile.open(location) as tar:
        names = set(tar.getnames())
        assert ARCHIVE_MEMBERS <= names, sorted(names)
        assert any(n.startswith("checkpoint/") and n.endswith(".img") for n in names), sorted(names)
        assert "checkpoint/inventory.img" in names
        config = json.loads(_read(tar, "config.dump"))
        spec = json.loads(_read(tar, "spec.dump"))
        deleted = json.loads(_read(tar, "deleted.files"))
        log = _read(tar, "container.log").decode()
        diff = tarfile.open(fileobj=tar.extractfile("rootfs-diff.tar"))
        diff_names = set(diff.getnames())
        kept = diff.extractfile("kept.txt")
        assert kept is not None
        assert kept.read() == b"before\n"

    # checkpointctl's ContainerConfig and the OCI spec both parse.
    assert config["id"] == counter
    assert config["name"] == "counter"
    assert config["runtime"] == "runc"
    assert GO_TIME.match(config["createdTime"]), config
    assert GO_TIME.match(config["checkpointedTime"]), config
    assert config["restored"] is False
    assert spec["process"]["args"][-1] == COUNTER
    assert spec["annotations"]["io.kubernetes.cri.container-name"] == "counter"
    assert spec["annotations"]["io.kubernetes.cri.sandbox-namespace"] == "test"
    # The writable layer: the counter's file and the kept one are there, the image's deleted file listed.
    assert {"count", "kept.txt"} <= diff_names, sorted(diff_names)
    assert "/etc/group" in deleted
    assert "etc/hosts" not in diff_names  # the pod's hosts file is a mount, not a change
    assert "count 1" in log

    # Left running, and still counting.
    assert container_status(live_daemon, counter).state == pb.CONTAINER_RUNNING
    before = _count(live_daemon, counter)
    eventually(
        lambda: _count(live_daemon, counter), lambda n: n > before, what="the counter to go on after the checkpoint"
    )


def test_checkpoint_replaces_an_existing_archive_whole(live_daemon: Daemon, counter: str, tmp_path: Path) -> None:
    needs_criu()
    location = tmp_path / "again.tar"
    location.write_bytes(b"an older archive")
    _checkpoint(live_daemon, counter, str(location))
    with tarfile.open(location) as tar:
        assert ARCHIVE_MEMBERS <= set(tar.getnames())
    assert [p.name for p in tmp_path.iterdir()] == [location.name]
    assert container_status(live_daemon, counter).state == pb.CONTAINER_RUNNING


# Holds a deleted 2 MiB file open. CRIU keeps a deleted open file in its images only up to its
# ghost limit, 1 MiB unless raised (runc does not raise it), so it refuses this container's dump.
GHOST_HOLDER = (
    "head -c 2097152 /dev/zero > /ghost; exec 3< /ghost; rm /ghost; i=0; "
    "while true; do i=$((i+1)); echo $i > /count.new; mv /count.new /count; sleep 0.1; done"
)


def test_dump_criu_refuses_leaves_the_container_running_and_nothing_behind(
    live_daemon: Daemon, busybox: str, pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path
) -> None:
    needs_criu()
    sid, config = pod
    cid = start_container(live_daemon, sid, config, container_config("ghost", busybox, ["sh", "-c", GHOST_HOLDER]))
    try:
        _wait_counting(live_daemon, cid)
        error = refusal(lambda: _checkpoint(live_daemon, cid, str(tmp_path / "c.tar")))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert f"checkpoint of {cid} failed" in error.details()
        assert "log file:" not in error.details()  # the staging directory is gone: CRIU's words are quoted
        assert "CRIU: " in error.details()  # its own reason, from dump.log
        assert list(tmp_path.iterdir()) == []
        assert not list(_bundle(live_daemon, cid).glob(".checkpoint-*"))
        assert _stage_mounts(_bundle(live_daemon, cid)) == []
        assert live_daemon.proc is not None
        assert _criu_below(live_daemon.proc.pid) == []  # ended and collected
        # Resumed (not left frozen) and still counting.
        assert container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING
        before = _count(live_daemon, cid)
        eventually(lambda: _count(live_daemon, cid), lambda n: n > before, what="the ghost holder to go on")
    finally:
        _remove(live_daemon, cid)


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    assert member is not None, name
    return member.read()


# -- a dump that overruns, or a daemon killed mid-dump, where CRIU works ----------------------------

# Holds 512 MiB of anonymous memory (a string doubled up to 2^29 bytes, really written, so resident),
# then counts in /count (renamed into place: never read empty): its dump is long enough for the call
# to overrun and for the daemon to be killed while CRIU is writing its images.
HOLDER_BYTES = 1 << 29
HOLDER = (
    'awk \'BEGIN { s = "a"; while (length(s) < ' + str(HOLDER_BYTES) + ") s = s s; "
    'for (n = 1; ; n++) system("echo " n " > /count.new && mv /count.new /count && sleep 0.1") }\''
)
HOLDER_READY = 300.0  # seconds: building the string is slow under software emulation


def _start_holder(daemon: Daemon, sid: str, config: pb.PodSandboxConfig, image: str) -> str:
    """A running holder whose memory is resident (its working set is at least the string)."""
    cid = start_container(daemon, sid, config, container_config("holder", image, ["sh", "-c", HOLDER]))
    _wait_counting(daemon, cid, timeout=HOLDER_READY)
    request = pb.ContainerStatsRequest(container_id=cid)
    eventually(
        lambda: daemon.runtime.ContainerStats(request, timeout=30).stats.memory.working_set_bytes.value,
        lambda working_set: working_set >= HOLDER_BYTES, what="the holder's working set to hold its string",
    )  # fmt: skip
    return cid


def _remove(daemon: Daemon, cid: str) -> None:
    stop(daemon, cid, timeout=0)
    remove_container(daemon, cid)


def _processes() -> dict[int, tuple[str, int]]:
    """pid: (command name, parent pid), of every process now."""
    found = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat_file.read_text().rpartition(")")
            found[int(stat_file.parent.name)] = (head.partition("(")[2], int(rest.split()[1]))
        except (OSError, ValueError, IndexError):
            continue
    return found


def kill9_while_criu_restores(daemon: Daemon, call: Callable[[], object], log: Path | None = None) -> None:
    """Runs the restoring `call` in a thread and kills the daemon with -9 once a real CRIU
    restores below it; starts the daemon again and waits until it has ended that CRIU. Given
    CRIU's `log`, the kill waits until CRIU has set up the namespaces (past the point where it
    would take its network lock) and stops CRIU there, so it is still mid-restore when the
    daemon is back, as a restore of gigabytes would be."""
    assert daemon.proc is not None
    daemon_pid = daemon.proc.pid
    caller = threading.Thread(target=rpc_code, args=(call,))
    caller.start()
    criu = eventually(
        lambda: _criu_below(daemon_pid), bool, timeout=CALL_TIMEOUT, interval=0.005, what="CRIU to start restoring"
    )  # fmt: skip
    if log is not None:
        eventually(
            lambda: _text(log), lambda text: CRIU_NAMESPACES_SET_UP in text, timeout=CALL_TIMEOUT, interval=0.005,
            what="CRIU to set up the restored tasks' namespaces",
        )  # fmt: skip
        _stop_criu(daemon_pid)
    daemon.kill9()
    caller.join(30)
    daemon.start()
    eventually(
        lambda: [pid for pid in criu if alive(pid)], lambda left: left == [], timeout=60,
        what="the interrupted restore's CRIU to be ended",
    )  # fmt: skip


# CRIU logs this once the namespaces are set up, its network lock (if any) taken.
CRIU_NAMESPACES_SET_UP = "Running post-setup-namespaces scripts"


def _stop_criu(daemon_pid: int) -> None:
    """SIGSTOP to every CRIU below the daemon: it stays where it is until someone ends it."""
    for pid in _criu_below(daemon_pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _criu_below(daemon_pid: int) -> list[int]:
    """CRIU processes (zombies included) below the daemon: under its runc, or inherited as the subreaper."""
    procs = _processes()

    def below(pid: int) -> bool:
        for _ in range(64):  # a parent chain, not a cycle: bounded all the same
            pid = procs.get(pid, ("", 0))[1]
            if pid == daemon_pid:
                return True
            if pid <= 1:
                return False
        return False

    return [pid for pid, (comm, _) in procs.items() if comm == "criu" and below(pid)]


def _criu_lock_in(pid: int) -> list[str]:
    """The lines of CRIU's network lock (its DROP chain `CRIU`, IPv4 and IPv6) in `pid`'s network
    namespace: a CRIU killed while it held the lock would leave the pod dropping every packet."""
    found = []
    for save in ("iptables-save", "ip6tables-save"):
        done = subprocess.run(
            ["nsenter", f"--net=/proc/{pid}/ns/net", save], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        found += [line for line in done.stdout.splitlines() if "CRIU" in line]
    return found


def _watch_criu(daemon_pid: int, done: threading.Event, seen: set[int]) -> None:
    """Polls /proc often until `done`, adding every CRIU below the daemon to `seen`."""
    while not done.is_set():
        seen.update(_criu_below(daemon_pid))
        done.wait(0.005)


def test_overrunning_dump_is_killed_at_the_timeout_and_the_container_resumed(
    live_daemon: Daemon, busybox: str, pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path
) -> None:
    needs_criu()
    # The daemon's one `criu check` starts with its first checkpoint call, and goes on after a
    # call that timed out: it must be over before the dumps whose CRIU this test watches.
    _criu_checked(live_daemon)
    sid, config = pod
    cid = _start_holder(live_daemon, sid, config, busybox)
    try:
        # Every attempt overruns and must leave nothing; the timeout doubles until one lands while
        # CRIU runs (a slow node may spend a whole second pausing and starting runc).
        for seconds in (1, 2, 4, 8, 16, 32):
            if _overrun(live_daemon, cid, tmp_path, seconds):
                break
        else:
            pytest.fail("no checkpoint reached CRIU before its timeout")
    finally:
        _remove(live_daemon, cid)


def _overrun(daemon: Daemon, cid: str, tmp_path: Path, seconds: int) -> set[int]:
    """A checkpoint with a timeout it overruns, and all it must leave; the CRIU processes seen meanwhile."""
    assert daemon.proc is not None
    daemon_pid = daemon.proc.pid
    done, seen = threading.Event(), set[int]()
    watcher = threading.Thread(target=_watch_criu, args=(daemon_pid, done, seen))
    watcher.start()
    try:
        error = refusal(lambda: _checkpoint(daemon, cid, str(tmp_path / "c.tar"), timeout=seconds))
    finally:
        done.set()
        watcher.join()
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
    assert f"within {seconds}s" in error.details()
    # CRIU killed and collected (not left a zombie), no archive, no staging left.
    assert _criu_below(daemon_pid) == []
    assert [pid for pid in seen if alive(pid)] == []
    assert list(tmp_path.iterdir()) == []
    assert not list(_bundle(daemon, cid).glob(".checkpoint-*"))
    assert _criu_lock_in(container_pid(daemon, cid)) == []  # the pod's network not cut
    # Resumed (not left frozen) and still counting.
    assert container_status(daemon, cid).state == pb.CONTAINER_RUNNING
    before = _count(daemon, cid)
    eventually(lambda: _count(daemon, cid), lambda n: n > before, what="the holder to go on counting")
    return seen


def _criu_checked(daemon: Daemon) -> None:
    """Until the daemon's one `criu check` has finished (Status starts it and reports its answer)."""

    def runc_checkpoint() -> Any:
        info = daemon.runtime.Status(pb.StatusRequest(verbose=True), timeout=30).info
        return json.loads(info["handlers"])["runc"]["checkpoint"]["available"]

    eventually(runc_checkpoint, lambda available: available is not None, what="criu check to finish")


@pytest.fixture
def own_daemon(test_images: TestImages) -> Iterator[tuple[Daemon, str]]:
    """A daemon of the test's own, since the test kills it; with the test image pulled."""
    needs_criu()
    with running_daemon() as daemon:
        yield daemon, pull_test_image(daemon, test_images)


def test_kill9_mid_checkpoint_leaves_the_container_running_and_nothing_behind(
    own_daemon: tuple[Daemon, str], tmp_path: Path
) -> None:
    needs_criu()
    daemon, image = own_daemon
    sid, config = run_pod(daemon, "checkpoint-kill9", handler="runc")
    try:
        cid = _start_holder(daemon, sid, config, image)
        _criu_checked(daemon)  # else the CRIU killed below could be this fresh daemon's `criu check`, not the dump
        bundle = _bundle(daemon, cid)
        assert daemon.proc is not None
        daemon_pid = daemon.proc.pid
        call = threading.Thread(target=rpc_code, args=(lambda: _checkpoint(daemon, cid, str(tmp_path / "c.tar")),))
        call.start()
        # A real CRIU dumping, below the daemon's runc: the daemon dies now, mid-dump.
        criu = eventually(
            lambda: _criu_below(daemon_pid), bool, timeout=CALL_TIMEOUT, interval=0.005, what="CRIU to start dumping"
        )
        # ... and writing the container's memory, past the point where it would take its network lock;
        # stopped there, so it is still mid-dump when the daemon is back, as a dump of gigabytes would be.
        eventually(
            lambda: list(bundle.glob(".checkpoint-*/checkpoint/pages-*.img")), bool, timeout=CALL_TIMEOUT,
            interval=0.005, what="CRIU to write the page image",
        )  # fmt: skip
        _stop_criu(daemon_pid)
        daemon.kill9()
        call.join(30)
        assert list(bundle.glob(".checkpoint-*"))  # staged by the checkpoint the kill interrupted
        assert _stage_mounts(bundle)  # CRIU's images in memory: the node spares that much for this container
        daemon.start()
        # The restarted daemon ended the orphaned runc and CRIU, removed the stage, resumed the container.
        eventually(
            lambda: [pid for pid in criu if alive(pid)], lambda left: left == [], timeout=60,
            what="the orphaned CRIU to be ended",
        )  # fmt: skip
        assert not list(bundle.glob(".checkpoint-*"))
        assert _stage_mounts(bundle) == []  # the images' tmpfs went with the stage
        assert list(tmp_path.iterdir()) == []
        assert container_status(daemon, cid).state == pb.CONTAINER_RUNNING
        assert _criu_lock_in(container_pid(daemon, cid)) == []  # the pod's network not cut
        before = _count(daemon, cid)
        eventually(lambda: _count(daemon, cid), lambda n: n > before, what="the holder to go on counting")
    finally:
        remove_pod(daemon, sid)


def _stage_mounts(bundle: Path) -> list[str]:
    """The tmpfs mounts of checkpoint stages in a container's directory (memstage.py)."""
    return [m for m in mount_points() if m.startswith(f"{bundle}/.checkpoint-")]


# -- restore into a new pod: CreateContainer whose image is an archive's path ------------------------


def _restore_config(name: str, location: Path | str) -> pb.ContainerConfig:
    """As the kubelet asks for a restore: the archive's path as the image, nothing else of the process."""
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=str(location)), log_path=f"{name}.log"
    )


def _synthetic_archive(
    location: Path, base_image: str, *, without: str = "", origin: dict[str, object] | None = None
) -> Path:
    """An archive in the layout, with no real CRIU images: enough for every check before CRIU runs."""
    config: dict[str, object] = {"id": "f" * 64, "name": "app", "rootfsImageName": base_image}
    if origin is not None:
        config["crishim"] = origin
    members = {
        "config.dump": json.dumps(config).encode(),
        "spec.dump": json.dumps({"process": {"args": ["sleep", "600"], "env": ["A=1"], "cwd": "/"}}).encode(),
        "deleted.files": b"[]",
    }
    with tarfile.open(location, "w") as tar:
        if without != "checkpoint":
            directory = tarfile.TarInfo("checkpoint")
            directory.type, directory.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(directory)
        for name, data in members.items():
            if name != without:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return location


def _nothing_left(daemon: Daemon, sid: str) -> None:
    """A refused restore leaves no container record, no directory, no staging of the archive."""
    listed = daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers
    assert [c.id for c in listed if c.pod_sandbox_id == sid] == []
    assert not list((daemon.root / "containers").glob(".restore-*"))


@pytest.fixture(scope="module")
def restore_pod(live_daemon: Daemon) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    # A hostname of its own: the restored container must see it, not the checkpointed pod's.
    sid, config = run_pod(live_daemon, "restored", handler="runc", hostname="restored-pod", linux=kubelet_pod_linux())
    yield sid, config
    remove_pod(live_daemon, sid)


def _create_restored(daemon: Daemon, pod: tuple[str, pb.PodSandboxConfig], name: str, location: Path | str) -> str:
    sid, config = pod
    return create_container(daemon, sid, config, _restore_config(name, location))


def test_restore_from_a_missing_archive_is_not_found(
    live_daemon: Daemon, restore_pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path
) -> None:
    location = tmp_path / "absent.tar"
    error = refusal(lambda: _create_restored(live_daemon, restore_pod, "absent", location))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert f"checkpoint archive {str(location)!r} does not exist" in error.details()
    _nothing_left(live_daemon, restore_pod[0])


@pytest.mark.parametrize("kind", ["not a tar", "truncated", "no config.dump", "no checkpoint images"])
def test_restore_from_a_corrupt_archive_is_invalid_argument(
    live_daemon: Daemon, busybox: str, restore_pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path, kind: str
) -> None:
    location = tmp_path / "bad.tar"
    if kind == "not a tar":
        location.write_bytes(b"\x00garbage" * 1000)
    elif kind == "truncated":
        whole = _synthetic_archive(tmp_path / "whole.tar", busybox).read_bytes()
        location.write_bytes(whole[: len(whole) // 3])
    else:
        _synthetic_archive(location, busybox, without="config.dump" if kind == "no config.dump" else "checkpoint")
    error = refusal(lambda: _create_restored(live_daemon, restore_pod, "corrupt", location))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "is not a usable checkpoint archive" in error.details()
    _nothing_left(live_daemon, restore_pod[0])


@pytest.mark.parametrize(
    ("origin", "said"),
    [
        ({"format": 1, "architecture": "s390x", "criuVersion": "3.17.1"}, "was taken on an s390x node"),
        ({"format": 1, "architecture": "", "criuVersion": "99.0"}, "dumped by CRIU 99.0, newer than this node's"),
        ({"format": 7, "architecture": "", "version": "9.9.9"}, "is in checkpoint format 7, written by crishim 9.9.9"),
    ],
    ids=["another architecture", "a newer criu", "a newer format"],
)
def test_restore_of_an_archive_this_node_cannot_run_is_refused_saying_why(
    live_daemon: Daemon, busybox: str, restore_pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path,
    origin: dict[str, object], said: str,
) -> None:  # fmt: skip
    if origin.get("criuVersion") == "99.0" and shutil.which("criu") is None:
        pytest.skip("without criu the node's CRIU version is unknown, so a newer one is not refused")
    location = _synthetic_archive(tmp_path / "c.tar", busybox, origin=origin)
    error = refusal(lambda: _create_restored(live_daemon, restore_pod, "elsewhere", location))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert f"checkpoint {str(location)!r} " in error.details()
    assert said in error.details()
    _nothing_left(live_daemon, restore_pod[0])


def test_restore_without_its_base_image_is_failed_precondition_naming_it(
    live_daemon: Daemon, restore_pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path
) -> None:
    absent = "127.0.0.1:1/never-pulled:v1"
    location = _synthetic_archive(tmp_path / "c.tar", absent)
    error = refusal(lambda: _create_restored(live_daemon, restore_pod, "nobase", location))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert f"the base image {absent!r}" in error.details()
    assert "is not in the image store" in error.details()
    _nothing_left(live_daemon, restore_pod[0])


def test_a_pod_holding_a_restored_container_never_started_stops_and_is_removed(
    live_daemon: Daemon, busybox: str, tmp_path: Path
) -> None:
    needs_criu()
    sid, config = run_pod(live_daemon, "restore-never-started", handler="runc")
    try:
        location = _synthetic_archive(tmp_path / "c.tar", busybox)
        cid = _create_restored(live_daemon, (sid, config), "waiting", location)
        assert container_status(live_daemon, cid).state == pb.CONTAINER_CREATED
        bundle = _bundle(live_daemon, cid)
        # No conmon ever ran for it: stopping the pod records it exited, and removal takes it whole.
        stop_pod(live_daemon, sid)
        assert container_status(live_daemon, cid).state == pb.CONTAINER_EXITED
    finally:
        remove_pod(live_daemon, sid)
    listed = live_daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers
    assert [c.id for c in listed if c.pod_sandbox_id == sid] == []
    assert not bundle.exists()


def test_restore_on_a_handler_without_criu_is_refused_naming_it(
    live_daemon: Daemon, busybox: str, tmp_path: Path
) -> None:
    location = _synthetic_archive(tmp_path / "c.tar", busybox)
    sid, config = run_pod(live_daemon, "restore-crun", handler="crun")
    try:
        error = refusal(lambda: _create_restored(live_daemon, (sid, config), "app", location))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert "runtime handler 'crun' cannot restore a checkpoint" in error.details()
        _nothing_left(live_daemon, sid)
    finally:
        remove_pod(live_daemon, sid)


def test_restore_where_criu_check_fails_is_failed_precondition_with_criu_reason(
    live_daemon: Daemon, busybox: str, restore_pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path
) -> None:
    ok, _ = criu_check()
    if ok:
        pytest.skip("criu check passes here: the refusal for a failing CRIU cannot happen")
    location = _synthetic_archive(tmp_path / "c.tar", busybox)
    error = refusal(lambda: _create_restored(live_daemon, restore_pod, "nocriu", location))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "restore from a checkpoint is unavailable on this node: " in error.details()
    assert "criu check failed: Error (criu/" in error.details()
    _nothing_left(live_daemon, restore_pod[0])


# -- the restore itself, where CRIU works -------------------------------------------------------------


def _archived_count(location: Path) -> int:
    """The counter's value at the checkpoint, from the archive's writable layer."""
    with tarfile.open(location) as tar, tarfile.open(fileobj=tar.extractfile("rootfs-diff.tar")) as diff:
        count = diff.extractfile("count")
        assert count is not None
        return int(count.read())


def _verbose_pid(daemon: Daemon, cid: str) -> int:
    request = pb.ContainerStatusRequest(container_id=cid, verbose=True)
    return int(json.loads(daemon.runtime.ContainerStatus(request, timeout=30).info["info"])["pid"])


def _pod_uts(daemon: Daemon, sid: str) -> str:
    """The pod's UTS namespace: its pin's (a pod without a pause process), else its infra process's."""
    request = pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)
    info = json.loads(daemon.runtime.PodSandboxStatus(request, timeout=30).info["info"])
    if "uts" in info["pinnedNamespaces"]:
        return f"uts:[{os.stat(info['pinnedNamespaces']['uts']).st_ino}]"
    return _namespace(int(info["pid"]), "uts")


def _namespace(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _conmon_pid(bundle: Path) -> int:
    return int((bundle / "conmon.pid").read_text().strip() or 0)


def test_counter_is_restored_in_a_new_pod_and_counts_on(
    live_daemon: Daemon, counter: str, restore_pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path
) -> None:
    needs_criu()
    location = tmp_path / "counter.tar"
    _checkpoint(live_daemon, counter, str(location))
    at_checkpoint = _archived_count(location)
    sid, pod_cfg = restore_pod

    cid = _create_restored(live_daemon, restore_pod, "counter", location)
    assert cid != counter
    assert container_status(live_daemon, cid).state == pb.CONTAINER_CREATED
    bundle = _bundle(live_daemon, cid)
    assert (bundle / "checkpoint" / "inventory.img").is_file()  # CRIU's images wait in its directory
    # A plain archive this small is unpacked in memory: the images are a tmpfs bound there, no stage is left.
    assert f"{bundle}/checkpoint" in mount_points()
    assert not list(bundle.parent.glob(".restore-*"))

    start(live_daemon, cid)
    status = container_status(live_daemon, cid)
    assert status.state == pb.CONTAINER_RUNNING, status
    # It reports the image it was checkpointed from by that image's name, not by an ID.
    assert status.image.image == container_status(live_daemon, counter).image.image, status.image
    assert status.image_ref == container_status(live_daemon, counter).image_ref
    # The archive says where it was taken, so another node can tell whether it can restore it.
    with tarfile.open(location) as tar:
        dumped = tar.extractfile("config.dump")
        assert dumped is not None
        origin = json.loads(dumped.read())["crishim"]
    assert origin["architecture"] in {"amd64", "arm64"}
    assert origin["format"] == 1
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", origin["criuVersion"]), origin
    # The shell's counter lives in its memory: restored, it goes on from the checkpoint, not from 1.
    first = _count(live_daemon, cid)
    assert first >= at_checkpoint, (first, at_checkpoint)
    eventually(lambda: _count(live_daemon, cid), lambda n: n > first, what="the restored counter to count on")
    # The writable layer: the file written before the checkpoint is there, the deleted one stays deleted.
    assert exec_checked(live_daemon, cid, ["cat", "/kept.txt"]) == "before\n"
    assert exec_output(live_daemon, cid, ["test", "-e", "/etc/group"])[0] != 0
    # In the new pod: its hostname is the new pod's (the pod's UTS namespace joined, not the old one restored).
    assert exec_checked(live_daemon, cid, ["hostname"]).strip() == "restored-pod"
    assert exec_checked(live_daemon, counter, ["hostname"]).strip() != "restored-pod"
    # The pod's UTS namespace, joined: the one its pin holds.
    assert _namespace(_verbose_pid(live_daemon, cid), "uts") == _pod_uts(live_daemon, sid)
    # Its log continues the checkpointed one at the new pod's log path.
    log = Path(pod_cfg.log_directory) / "counter.log"
    eventually(
        lambda: log.read_text(), lambda text: "count 1\n" in text and f"count {first + 1}\n" in text,
        what="the restored container's log to continue the checkpointed one",
    )  # fmt: skip
    assert not (bundle / "checkpoint").exists()  # the images are in the process now
    assert f"{bundle}/checkpoint" not in mount_points()  # and their memory is freed

    conmon_pid = _conmon_pid(bundle)
    assert conmon_pid > 0
    assert alive(conmon_pid)
    stop(live_daemon, cid, timeout=0)
    assert container_status(live_daemon, cid).state == pb.CONTAINER_EXITED
    remove_container(live_daemon, cid)
    eventually(lambda: alive(conmon_pid), lambda up: not up, what="the restored container's conmon to exit")
    assert not bundle.exists()
    assert container_status(live_daemon, counter).state == pb.CONTAINER_RUNNING  # the original runs on


def test_failed_restore_is_start_error_and_leaves_nothing_running(
    live_daemon: Daemon, counter: str, restore_pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path
) -> None:
    needs_criu()
    whole = tmp_path / "whole.tar"
    _checkpoint(live_daemon, counter, str(whole))
    # The same archive without the memory pages: CRIU cannot bring the process back.
    location = tmp_path / "no-pages.tar"
    with tarfile.open(whole) as src, tarfile.open(location, "w") as dst:
        for member in src:
            if not Path(member.name).name.startswith("pages-"):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    cid = _create_restored(live_daemon, restore_pod, "broken", location)
    error = refusal(lambda: start(live_daemon, cid))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert f"restore of container {cid} failed" in error.details()
    status = container_status(live_daemon, cid)
    assert status.state == pb.CONTAINER_EXITED, status
    assert status.reason == "StartError", status
    assert subprocess.run(["pgrep", "-f", f"conmon.*{cid}"], capture_output=True).returncode == 1
    remove_container(live_daemon, cid)


def test_a_restore_pending_container_survives_a_daemon_restart(own_daemon: tuple[Daemon, str], tmp_path: Path) -> None:
    needs_criu()
    daemon, image = own_daemon
    old_sid, old_cfg = run_pod(daemon, "checkpoint-old", handler="runc")
    new_sid, new_cfg = run_pod(daemon, "restore-new", handler="runc")
    try:
        cid = start_container(daemon, old_sid, old_cfg, container_config("counter", image, ["sh", "-c", COUNTER]))
        eventually(lambda: _count(daemon, cid), lambda n: n >= 3, what="the counter to count")
        location = tmp_path / "c.tar"
        _checkpoint(daemon, cid, str(location))
        restored = _create_restored(daemon, (new_sid, new_cfg), "counter", location)
        daemon.kill9()
        daemon.start()
        # Still CREATED with its images (not taken for a container that exited in the downtime) ...
        assert container_status(daemon, restored).state == pb.CONTAINER_CREATED
        start(daemon, restored)
        # ... and restored by the new daemon, counting on from the checkpoint.
        assert container_status(daemon, restored).state == pb.CONTAINER_RUNNING
        assert _count(daemon, restored) >= _archived_count(location)
    finally:
        remove_pod(daemon, new_sid)
        remove_pod(daemon, old_sid)


Pod = tuple[str, pb.PodSandboxConfig]


@pytest.fixture
def holder_pods(own_daemon: tuple[Daemon, str]) -> Iterator[tuple[Pod, Pod]]:
    """The pod a holder is checkpointed in and the pod it is restored into, on the test's own daemon."""
    daemon = own_daemon[0]
    old = run_pod(daemon, "checkpoint-holder", handler="runc")
    try:
        new = run_pod(daemon, "restore-new", handler="runc")
        try:
            yield old, new
        finally:
            remove_pod(daemon, new[0])
    finally:
        remove_pod(daemon, old[0])


def _holder_created_from_its_checkpoint(daemon: Daemon, image: str, old: Pod, new: Pod, tmp_path: Path) -> str:
    """A holder started in `old`, checkpointed and removed, then created from its archive in `new`
    (CreateContainer only): the restored container's ID."""
    holder = _start_holder(daemon, old[0], old[1], image)
    location = tmp_path / "holder.tar"
    _checkpoint(daemon, holder, str(location))
    _remove(daemon, holder)
    return _create_restored(daemon, new, "holder", location)


def test_kill9_mid_restore_ends_the_restore_and_records_a_start_error(
    own_daemon: tuple[Daemon, str], holder_pods: tuple[Pod, Pod], tmp_path: Path
) -> None:
    daemon, image = own_daemon
    new_sid = holder_pods[1][0]
    cid = _holder_created_from_its_checkpoint(daemon, image, *holder_pods, tmp_path)
    # A real CRIU reading 512 MiB of pages back, below the daemon's conmon: the daemon dies then.
    kill9_while_criu_restores(daemon, lambda: start(daemon, cid), _bundle(daemon, cid) / "restore.log")
    # The restarted daemon ended conmon, runc and CRIU, and says why the container did not start.
    status = container_status(daemon, cid)
    assert status.state == pb.CONTAINER_EXITED, status
    assert status.reason == "StartError", status
    assert "the daemon was killed while CRIU restored it" in status.message, status.message
    assert _criu_lock_in(sandbox_pid(daemon, new_sid)) == []  # the new pod's network not cut
    assert subprocess.run(["pgrep", "-f", f"conmon.*{cid}"], capture_output=True).returncode == 1
    # runc's bind of the rootfs for CRIU, which the killed `runc restore` never undid, and its state.
    assert [m for m in mount_points() if m.startswith(f"{daemon.dir}/run/runc/")] == []
    assert not (daemon.dir / "run" / "runc" / cid).exists()
    bundle = _bundle(daemon, cid)
    remove_container(daemon, cid)
    assert not bundle.exists()


def _late_hook(daemon: Daemon, cid: str) -> list[dict[str, Any]]:
    """The createRuntime hooks of the container's spec that wait for its page images' copy (late_pages.py)."""
    request = pb.ContainerStatusRequest(container_id=cid, verbose=True)
    spec = json.loads(daemon.runtime.ContainerStatus(request, timeout=30).info["info"])["runtimeSpec"]
    hooks = (spec.get("hooks") or {}).get("createRuntime") or []
    return [h for h in hooks if any(str(a).endswith("/late-pages.lock") for a in h.get("args") or [])]


def test_kill9_while_create_copies_the_pages_records_a_start_error_and_leaves_nothing(
    own_daemon: tuple[Daemon, str], holder_pods: tuple[Pod, Pod], tmp_path: Path
) -> None:
    """CreateContainer returns while the holder's 512 MiB of pages are still copied into the container;
    the daemon dies mid-copy. The restarted daemon cannot finish that copy: the container is EXITED
    with a StartError that says so, and removing it leaves no file and no mount."""
    daemon, image = own_daemon
    cid = _holder_created_from_its_checkpoint(daemon, image, *holder_pods, tmp_path)
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)  # the copy stops where it is
    bundle = daemon.root / "containers" / cid  # not asked of the stopped daemon
    assert (bundle / "late-pages.pending").exists(), "the copy of 512 MiB ended before the daemon was stopped"
    assert not (bundle / "checkpoint" / "pages-1.img").exists()  # only its partial file: CRIU never reads it
    daemon.kill9()
    daemon.start()
    status = container_status(daemon, cid)
    assert status.state == pb.CONTAINER_EXITED, status
    assert status.reason == "StartError", status
    assert "copied the checkpoint's memory" in status.message, status.message
    error = refusal(lambda: start(daemon, cid))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    remove_container(daemon, cid)
    assert not bundle.exists()
    assert [m for m in mount_points() if m.startswith(str(bundle))] == []
