"""A cancelled pull stops unpacking a stored blob at its next read, instead of running on
in its thread long after the kubelet's deadline."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from crishim.images.errors import UnpackAborted
from crishim.images.layerstream import file_source
from crishim.images.tasks import in_thread


def test_file_source_raises_once_stopped_and_closes_the_file(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * (4 << 20))
    stop = threading.Event()
    read = file_source(blob, stop)
    assert read()
    stop.set()
    with pytest.raises(UnpackAborted):
        read()
    assert str(blob) not in _open_files()


def _open_files() -> set[str]:
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            found.add(os.readlink(fd))
        except OSError:
            continue  # the directory's own descriptor, closed by now
    return found


async def test_cancelling_in_thread_sets_stop_and_waits_for_the_thread(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"y" * 1024)
    stop = threading.Event()
    ended = threading.Event()

    def slow_unpack() -> int:
        read = file_source(blob, stop)
        chunks = 0
        try:
            while True:  # an endless reader: only `stop` ends it
                time.sleep(0.01)
                if read() is None:
                    read = file_source(blob, stop)
                chunks += 1
        finally:
            ended.set()

    task = asyncio.ensure_future(in_thread(slow_unpack, stop))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stop.is_set()
    assert ended.is_set()  # the cancel returned only after the thread had ended
