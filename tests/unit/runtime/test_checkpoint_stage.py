"""What a daemon killed mid-checkpoint leaves in a stage is ended at start-up, and nothing else is."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crishim.oci.checkpoint import SESSION_FILE
from crishim.oci.processes import alive, descendants
from crishim.runtime.checkpoint.stage import PARTIAL_FILE, clean_stage, discard_stage


@pytest.fixture
def session(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A stand-in for runc checkpoint: a session leader naming the stage, with a child in its session."""
    stage = tmp_path / "bundle" / ".checkpoint-x"
    stage.mkdir(parents=True)
    leader = subprocess.Popen(["sh", "-c", f"sleep 600; : --work-path {stage}"], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(descendants(leader.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the shell has started its child
    yield stage, leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader.pid, signal.SIGKILL)  # the shell and its sleep
    leader.wait()


def test_stage_of_an_interrupted_checkpoint_is_ended_and_removed(
    session: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    stage, leader = session
    (stage / SESSION_FILE).write_text(f"{leader.pid}\n")
    partial = tmp_path / ".c.tar.x.partial"
    partial.write_bytes(b"half an archive")
    (stage / PARTIAL_FILE).write_text(str(partial))
    ended = clean_stage(stage)
    assert leader.pid in ended
    assert len(ended) == 2  # the sleep below it too
    leader.wait(10)
    assert not any(alive(pid) for pid in ended)
    assert not partial.exists()
    assert not stage.exists()


def test_session_that_is_not_the_checkpoints_is_left_alone(
    session: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    stage, leader = session
    other = tmp_path / "bundle" / ".checkpoint-y"
    other.mkdir()
    (other / SESSION_FILE).write_text(f"{leader.pid}\n")  # a reused pid: its command line names another stage
    keep = tmp_path / "c.tar"  # not a partial file: never removed
    keep.write_bytes(b"a finished archive")
    (other / PARTIAL_FILE).write_text(str(keep))
    assert clean_stage(other) == []
    assert alive(leader.pid)
    assert keep.exists()
    assert not other.exists()


def test_a_finished_stage_is_gone_at_once_and_its_files_soon_after(tmp_path: Path) -> None:
    stage = tmp_path / "bundle" / ".checkpoint-done"
    (stage / "checkpoint").mkdir(parents=True)
    (stage / "checkpoint" / "pages-1.img").write_bytes(b"\0" * 65536)
    discard_stage(stage)
    assert not stage.exists()
    assert not list(stage.parent.glob(".checkpoint-*"))  # no stage left for a restart to end
    deadline = time.monotonic() + 10
    while list(stage.parent.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(stage.parent.iterdir()) == []
