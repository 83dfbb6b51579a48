"""Pinned pre-fetch against the real test registry: at start-up, across a restart, by hand
(`crishim images prefetch FILE`), following a moved tag; and RemoveImage of a pinned image."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.images import build as b
from crishim.images.scheduler import PRIORITY_ANNOTATION
from crishim.images.store import ImageStore

from tests.support import cri
from tests.support.daemon import Daemon, running_daemon
from tests.support.push import Pusher

if TYPE_CHECKING:
    from tests.support.images import TestImages
    from tests.support.registry import RegistryServer

pytest_plugins = ["tests.support.registry", "tests.support.images"]

pytestmark = pytest.mark.root


def images_config(prefetch: list[str], refresh_interval: float = 0) -> str:
    listed = ", ".join(f'"{ref}"' for ref in prefetch)
    return f"\n[images]\nprefetch = [{listed}]\nrefresh_interval = {refresh_interval}\n"


@contextlib.contextmanager
def silent_registry() -> Iterator[str]:
    """A host:port whose connections the kernel accepts and nobody ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def pinned_listing(daemon: Daemon) -> dict[str, bool]:
    """repo tag -> pinned, of every image the daemon lists."""
    return {tag: image.pinned for image in cri.list_images(daemon) for tag in image.repo_tags}


def wait_pinned(daemon: Daemon, refs: list[str]) -> dict[str, bool]:
    return cri.eventually(
        lambda: pinned_listing(daemon),
        lambda seen: all(seen.get(ref) for ref in refs),
        timeout=120,
        what=f"{refs} pulled and pinned",
    )


def log_since(daemon: Daemon, offset: int) -> str:
    return daemon.log_file.read_text(errors="replace")[offset:]


def test_prefetch_at_start_up_is_pinned_kept_across_a_restart_and_not_removed(test_images: TestImages) -> None:
    refs = [test_images.ref("busybox:latest"), test_images.ref("layers:latest")]
    with (
        silent_registry() as silent,
        running_daemon("image_pull_progress_timeout = 3\n" + images_config([*refs, f"{silent}/stalled:1"])) as daemon,
    ):
        # The daemon answers (start() waits for Version) while one pre-fetch hangs on a registry
        # that never answers; the others are pulled meanwhile, in the background.
        wait_pinned(daemon, refs)
        text = cri.eventually(
            lambda: daemon.log_file.read_text(),
            lambda text: f"prefetch 3/3 {silent}/stalled:1: failed, will retry" in text,
            timeout=60,
            what="the stalled pre-fetch given up until the retry",
        )
        assert all(f"prefetch {n}/3 {ref}: ready and pinned" in text for n, ref in enumerate(refs, 1)), text
        assert f"pull {refs[0]}: started (background priority)" in text

        error = cri.refusal(lambda: cri.remove_image(daemon, refs[0]))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is pinned" in (error.details() or "")
        assert pinned_listing(daemon)[refs[0]]

        before_restart = daemon.log_file.stat().st_size
        daemon.stop()
        daemon.start()
        wait_pinned(daemon, refs)
        restarted = cri.eventually(
            lambda: log_since(daemon, before_restart),
            lambda text: "prefetch 2/3" in text and "prefetch 1/3" in text,
            timeout=60,
            what="the pre-fetch pass after the restart",
        )
        assert "pull " + refs[0] not in restarted, restarted
        assert "pull " + refs[1] not in restarted, restarted


def test_pulls_of_priority_pods_are_marked_high(test_images: TestImages) -> None:
    def sandbox(namespace: str, annotations: dict[str, str]) -> pb.PodSandboxConfig:
        meta = pb.PodSandboxMetadata(name="puller", namespace=namespace, uid=f"uid-{namespace}")
        return pb.PodSandboxConfig(metadata=meta, annotations=annotations)

    annotated, system, plain = (
        test_images.ref("user-uid:latest"),
        test_images.ref("user-name:latest"),
        test_images.ref("user-uid-group:latest"),
    )
    with running_daemon() as daemon:
        cri.pull(daemon, annotated, sandbox("default", {PRIORITY_ANNOTATION: "high"}))
        cri.pull(daemon, system, sandbox("kube-system", {}))
        cri.pull(daemon, plain, sandbox("default", {}))
        text = daemon.log_file.read_text()
    assert f"pull {annotated}: started (high priority)" in text
    assert f"pull {system}: started (high priority)" in text
    assert f"pull {plain}: started (normal priority)" in text


def crishim(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "crishim.runtime.cli", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_prefetch_command_loads_a_list_the_daemon_keeps(test_images: TestImages, tmp_path: Path) -> None:
    ref = test_images.ref("user-name-group:latest")
    listing = tmp_path / "prefetch.list"
    listing.write_text(f"# images for this node\n{ref}\n\n")
    with running_daemon(start=False) as daemon:
        result = crishim(daemon.config_file, "images", "prefetch", str(listing))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"prefetch {ref}" in result.stdout
        assert "pinned sha256:" in result.stdout
        shown = crishim(daemon.config_file, "images")
        assert any(ref in line and line.rstrip().endswith("yes") for line in shown.stdout.splitlines()), shown.stdout
        daemon.start()
        wait_pinned(daemon, [ref])
        text = cri.eventually(
            lambda: daemon.log_file.read_text(),
            lambda text: f"prefetch 1/1 {ref}: ready and pinned" in text,
            timeout=60,
            what="the daemon's pre-fetch pass over the list loaded by hand",
        )
        assert f"pull {ref}" not in text  # present: pinned, not downloaded again

        bad = tmp_path / "bad.list"
        bad.write_text("not a valid reference!\n")
        refused = crishim(daemon.config_file, "images", "prefetch", str(bad))
        assert refused.returncode != 0
        assert "not a valid reference!" in refused.stderr


async def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"{what} not reached within 60s"
        await asyncio.sleep(0.1)


async def test_refresh_follows_a_moved_tag(registry: RegistryServer, tmp_path: Path) -> None:
    first = b.build_image([[b.regular("version", b"1\n")]], b.ImageConfig(cmd=("sh",)))
    second = b.build_image([[b.regular("version", b"2\n")]], b.ImageConfig(cmd=("sh",)))
    ref = f"{registry.host}/prefetch/moving:stable"
    with Pusher(registry.host) as pusher:
        pusher.push("prefetch/moving", first, ["stable"])
    store = ImageStore(tmp_path / "images", None)
    try:
        store.start_prefetch([ref], refresh_interval=0.3)

        def current(image: b.BuiltImage) -> bool:
            record = store.list()
            return any(r.id == image.config_digest and r.pinned and ref in r.repo_tags for r in record)

        await wait_for(lambda: current(first), "the first image pinned")
        with Pusher(registry.host) as pusher:
            pusher.push("prefetch/moving", second, ["stable"])
        await wait_for(lambda: current(second), "the moved tag followed")
        old = store.resolve(first.config_digest)
        assert not old.pinned
        assert ref not in old.repo_tags
        await store.remove(first.config_digest)
    finally:
        await store.aclose()
