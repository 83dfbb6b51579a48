"""Killing a process tree: every member ends, and what is our child is reaped, not left a zombie."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from crishim.oci import processes


def _children_of(pid: int, expected: int, seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tree = processes.descendants(pid)
        if len(tree) > expected:
            return tree
        time.sleep(0.02)
    raise AssertionError(f"{pid} did not start {expected} children")


def test_kill_tree_ends_the_process_and_everything_below_it() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    tree = _children_of(shell.pid, 2)
    assert tree[0] == shell.pid
    killed = processes.kill_tree(shell.pid)
    assert set(killed) == set(tree)
    assert shell.poll() is not None  # our child: reaped by kill_tree, so Popen sees the exit code
    for pid in tree[1:]:
        assert not processes.alive(pid)


def test_a_zombie_counts_as_not_alive() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not processes.alive(child.pid)
    child.wait()
    assert not processes.alive(child.pid)


def test_naming_finds_the_processes_that_carry_an_argument_whole() -> None:
    word = uuid.uuid4().hex * 2  # as long as a container ID, and this test's alone
    # `read` is a shell builtin: no child is forked, which would carry the shell's command line
    # (and the word) from its fork until its exec.
    carrier = subprocess.Popen(["sh", "-c", "read line", "sh", word], stdin=subprocess.PIPE)
    prefix = subprocess.Popen(["sh", "-c", "read line", "sh", word[:40]], stdin=subprocess.PIPE)
    try:
        assert processes.naming(word) == [carrier.pid]
        processes.kill_tree(carrier.pid)
        assert processes.naming(word) == []
    finally:
        for proc in (carrier, prefix):
            proc.kill()
            proc.communicate()
