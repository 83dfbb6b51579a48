"""The PID namespace holder: catatonit confined by unshare, found again by its tag, ended."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crishim.oci import processes
from crishim.oci.mounttable import mount_points
from crishim.runtime.errors import Internal
from crishim.runtime.network import netns
from crishim.runtime.sandbox import pidholder, pinned
from crishim.runtime.sandbox.holder import scope_name

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts processes in new namespaces")

SANDBOX = "a" * 64


@pytest.fixture
def root(tmp_path: Path) -> pidholder.HolderRoot:
    prepared = pidholder.prepare(tmp_path / "pid-holder")
    assert prepared is not None, "unshare and a static catatonit are set-up's packages"
    return prepared


@pytest.fixture
def holder(root: pidholder.HolderRoot, tmp_path: Path) -> Iterator[pidholder.Holder]:
    held = pidholder.spawn(root, SANDBOX, tmp_path / "holder.log")
    yield held
    pidholder.end(held, root.tag(SANDBOX))


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_only_a_binary_without_an_interpreter_counts_as_static(tmp_path: Path) -> None:
    assert pidholder.is_static(Path(shutil.which("catatonit") or "/usr/bin/catatonit"))
    assert not pidholder.is_static(Path("/bin/sh"))
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert not pidholder.is_static(tmp_path / "script")
    assert not pidholder.is_static(tmp_path / "absent")


def test_the_root_holds_catatonit_alone_executable_but_unreadable_by_others(root: pidholder.HolderRoot) -> None:
    assert os.listdir(root.directory) == ["catatonit"]
    for path in (root.directory, root.directory / "catatonit"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o711
    before = (root.directory / "catatonit").stat().st_mtime_ns
    assert pidholder.prepare(root.directory) == root  # unchanged: not copied again
    assert (root.directory / "catatonit").stat().st_mtime_ns == before


def test_the_holder_is_pid_1_of_a_new_namespace_confined_and_not_dumpable(holder: pidholder.Holder) -> None:
    assert os.readlink(f"/proc/{holder.pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert _status(holder.pid)["NSpid"].split()[-1] == "1"
    assert int(_status(holder.pid)["PPid"]) == holder.parent_pid
    status = _status(holder.pid)
    assert status["Uid"].split() == ["65535"] * 4
    assert status["Groups"] == ""
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
    assert os.stat(f"/proc/{holder.pid}/environ").st_uid == 0  # non-dumpable: owned by root
    assert os.readlink(f"/proc/{holder.pid}/cwd") == os.readlink(f"/proc/{holder.pid}/root")
    # A process of the holder's own uid, as a container of the pod might run, cannot look inside.
    peek = subprocess.run(
        ["setpriv", "--reuid=65535", "--regid=65535", "--clear-groups", "ls", f"/proc/{holder.pid}/root/"],
        capture_output=True,
        text=True,
    )
    assert peek.returncode != 0
    assert "Permission denied" in peek.stderr


def _forked_child(pid: int) -> int:
    """The child `pid` forks (nsenter forks to enter a PID namespace), once it has."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        below = processes.descendants(pid)[1:]
        if below:
            return below[-1]
        time.sleep(0.01)
    raise AssertionError(f"{pid} forked no child")


def test_ending_the_holder_ends_every_process_left_in_its_namespace(root: pidholder.HolderRoot, tmp_path: Path) -> None:
    held = pidholder.spawn(root, SANDBOX, tmp_path / "holder.log")
    joined = subprocess.Popen(["nsenter", f"--pid=/proc/{held.pid}/ns/pid", "sleep", "60"])
    try:
        sleeper = _forked_child(joined.pid)
        assert os.readlink(f"/proc/{sleeper}/ns/pid") == os.readlink(f"/proc/{held.pid}/ns/pid")
        assert int(_status(sleeper)["NSpid"].split()[-1]) > 1  # PID 1 in there is the holder
        pidholder.end(held, root.tag(SANDBOX))
        assert joined.wait(timeout=10) != 0  # its child was killed with the namespace
        assert not processes.alive(sleeper)
    finally:
        joined.kill()
        joined.wait()


def test_the_tag_finds_the_holder_and_nothing_else(root: pidholder.HolderRoot, holder: pidholder.Holder) -> None:
    tag = root.tag(SANDBOX)
    assert pidholder.is_holder_parent(holder.parent_pid, tag)
    assert not pidholder.is_holder_parent(holder.parent_pid, root.tag("b" * 64))
    assert not pidholder.is_holder_parent(holder.pid, tag)  # catatonit is not the parent
    assert pidholder.parents_for(root.directory) == {SANDBOX: [holder.parent_pid]}
    assert pidholder.parents_for(root.directory / "other") == {}
    pidholder.kill(holder, root.tag("b" * 64))  # another pod's tag: not signalled
    assert processes.alive(holder.pid)


def test_end_leaves_neither_process_nor_zombie(root: pidholder.HolderRoot, tmp_path: Path) -> None:
    held = pidholder.spawn(root, SANDBOX, tmp_path / "holder.log")
    pidholder.end(held, root.tag(SANDBOX))
    assert not Path(f"/proc/{held.pid}").exists()
    assert not Path(f"/proc/{held.parent_pid}").exists()  # reaped: it was this process's child
    pidholder.end(held, root.tag(SANDBOX))  # gone already is fine


def test_killing_unshare_ends_the_holder_too(root: pidholder.HolderRoot, tmp_path: Path) -> None:
    held = pidholder.spawn(root, SANDBOX, tmp_path / "holder.log")
    processes.kill_tree(held.parent_pid)
    processes.wait_gone([held.pid])
    assert not processes.alive(held.pid)


def test_a_holder_that_cannot_start_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o711)
    broken = pidholder.HolderRoot(empty, shutil.which("unshare") or "unshare")
    with pytest.raises(OSError, match="did not start: .*catatonit"):
        pidholder.spawn(broken, SANDBOX, tmp_path / "holder.log")
    assert pidholder.parents_for(empty) == {}


def test_pin_and_hold_starts_the_holder_in_the_pinned_namespaces(root: pidholder.HolderRoot, tmp_path: Path) -> None:
    placed: list[pidholder.Holder] = []
    net = asyncio.run(netns.create("holder-test", str(tmp_path / "netns")))
    try:
        wanted = pinned.PodNamespaces(tmp_path / "ns", ("ipc", "uts"), "held-pod", net)
        request = pinned.HolderRequest(root, SANDBOX, tmp_path / "holder.log", placed.append)
        paths, held = asyncio.run(pinned.pin_and_hold(pinned.start_pin_and_hold(wanted, request)))
        try:
            assert placed == [held]
            for kind, path in (*paths.items(), ("net", net)):
                assert os.readlink(f"/proc/{held.pid}/ns/{kind}") == f"{kind}:[{os.stat(path).st_ino}]"
        finally:
            pidholder.end(held, root.tag(SANDBOX))
            pinned.unpin(paths)
    finally:
        asyncio.run(netns.remove(net))
        netns.release_dir(str(tmp_path / "netns"))


def test_a_placement_that_fails_ends_the_holder_and_unpins(root: pidholder.HolderRoot, tmp_path: Path) -> None:
    started: list[pidholder.Holder] = []

    def refuse(held: pidholder.Holder) -> None:
        started.append(held)
        raise OSError("no cgroup for it")

    wanted = pinned.PodNamespaces(tmp_path / "ns", ("ipc",))
    request = pinned.HolderRequest(root, SANDBOX, tmp_path / "holder.log", refuse)
    with pytest.raises(Internal, match="no cgroup for it"):
        asyncio.run(pinned.pin_and_hold(pinned.start_pin_and_hold(wanted, request)))
    [held] = started
    assert not processes.alive(held.pid)
    assert not processes.alive(held.parent_pid)
    assert not (tmp_path / "ns" / "ipc").exists()
    assert not [m for m in mount_points() if str(tmp_path) in m]


def test_the_holder_scope_is_named_as_runc_named_the_pause_containers() -> None:
    assert scope_name(f"kubepods-pod1.slice:crishim:{SANDBOX}") == f"crishim-{SANDBOX}.scope"
