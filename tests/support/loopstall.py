"""How long CRI calls wait while the daemon deletes GBs: shared by the loop-latency test
and scripts/bench-loop.

A tight loop of Version calls through the daemon's socket runs beside the work; the
slowest call is compared with the slowest over a few idle seconds (the noise floor).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from crishim.cri_api import api_pb2 as pb
from crishim.images import build as b

from tests.support.daemon import Daemon
from tests.support.push import Pusher

FILES = 16384
FILE_SIZE = 64 * 1024  # 16 Ki files of 64 KiB: 1 GiB unpacked, a few MB compressed (zeros)
CANCEL_AFTER = 2.0  # PullImage's deadline: well inside the unpack of 1 GiB


def push_big_image(registry_host: str) -> str:
    """Builds the 1 GiB image and pushes it; returns its reference."""
    zeros = bytes(FILE_SIZE)
    files = [b.regular(f"data/{i // 256:03d}/{i:05d}", zeros) for i in range(FILES)]
    image = b.build_image([files])
    with Pusher(registry_host, timeout=300) as pusher:
        pusher.push("crishim-test/big", image, ["1"])
    return f"{registry_host}/crishim-test/big:1"


def worst_version_latency(daemon: Daemon, work: Callable[[], None]) -> float:
    """The slowest of back-to-back Version calls made while `work` runs."""
    stop = threading.Event()
    worst = 0.0
    calls = 0

    def loop() -> None:
        nonlocal worst, calls
        stub = daemon.runtime
        while not stop.is_set():
            started = time.monotonic()
            stub.Version(pb.VersionRequest(), timeout=10)
            worst = max(worst, time.monotonic() - started)
            calls += 1

    thread = threading.Thread(target=loop, name="version-loop")
    thread.start()
    try:
        work()
    finally:
        stop.set()
        thread.join()
    if calls == 0:
        raise RuntimeError("the Version loop never ran")
    return worst


def idle_worst(daemon: Daemon) -> float:
    """The worst Version call over 3 s of an idle daemon: the noise floor."""
    return worst_version_latency(daemon, lambda: time.sleep(3))


def layers_dir(daemon: Daemon) -> Path:
    return daemon.root / "images" / "layers"


def leftovers(daemon: Daemon, before: set[Path]) -> list[Path]:
    """Temp files and layer directories beyond `before`."""
    store = daemon.root / "images"
    return sorted({*(store / "tmp").iterdir(), *layers_dir(daemon).iterdir()} - before)


def spec(ref: str) -> pb.ImageSpec:
    return pb.ImageSpec(image=ref)


def remove_stall(daemon: Daemon, ref: str) -> tuple[float, float]:
    """(worst Version call during RemoveImage of the pulled `ref`, idle floor before it)."""
    floor = idle_worst(daemon)
    worst = worst_version_latency(
        daemon, lambda: daemon.images.RemoveImage(pb.RemoveImageRequest(image=spec(ref)), timeout=120)
    )
    return worst, floor


def cancel_stall(daemon: Daemon, ref: str, before: set[Path]) -> tuple[float, float]:
    """(worst Version call while a pull cancelled by its deadline is undone, idle floor).

    The deadline passes mid-unpack: the daemon cancels the pull, its unpack thread stops at
    the next inflate step (the whole compressed layer, a few MB, is read long before), and
    what it unpacked is deleted out of process.
    """
    floor = idle_worst(daemon)
    try:
        daemon.images.PullImage(pb.PullImageRequest(image=spec(ref)), timeout=CANCEL_AFTER)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    else:
        raise RuntimeError(f"the pull of {ref} finished within {CANCEL_AFTER}s: nothing was cancelled")

    def wait_for_cleanup() -> None:
        deadline = time.monotonic() + 120
        while leftovers(daemon, before) and time.monotonic() < deadline:
            time.sleep(0.1)

    return worst_version_latency(daemon, wait_for_cleanup), floor
