"""Pinned network namespaces, for real (needs root)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from crishim.runtime.network import netns
from crishim.runtime.network.errors import FailedPrecondition, NotFound

pytestmark = pytest.mark.root


@pytest.fixture
def ns_dir(tmp_path: Path) -> Iterator[str]:
    d = str(tmp_path / "netns")
    yield d
    if os.path.isdir(d):
        for name in os.listdir(d):
            netns._remove_pin(os.path.join(d, name))
        netns.release_dir(d)


async def test_created_namespace_is_pinned_with_loopback_up(ns_dir: str) -> None:
    path = await netns.create("sb-1", ns_dir)
    assert path == os.path.join(ns_dir, "sb-1")
    assert netns.exists(path)
    assert os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino
    assert await netns.interfaces(path) == ["lo"]
    assert "127.0.0.1/8" in await netns.addresses(path, "lo")


async def test_remove_is_idempotent_and_leaves_no_file(ns_dir: str) -> None:
    path = await netns.create("sb-2", ns_dir)
    await netns.remove(path)
    await netns.remove(path)
    assert not netns.exists(path)
    assert not netns.exists(path)
    assert os.listdir(ns_dir) == []


async def test_creating_the_same_pin_twice_fails(ns_dir: str) -> None:
    await netns.create("sb-3", ns_dir)
    with pytest.raises(FailedPrecondition, match="already exists"):
        await netns.create("sb-3", ns_dir)


async def test_socket_opened_inside_listens_in_the_pod_not_on_the_host(ns_dir: str) -> None:
    path = await netns.create("sb-4", ns_dir)

    def listen() -> socket.socket:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        return s

    server = await netns.run_in(path, listen)
    port = server.getsockname()[1]
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()

        def dial() -> bool:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True

        assert await netns.run_in(path, dial)
        stats = {s.name: s for s in await netns.interface_stats(path)}
        assert stats["lo"].rx_bytes > 0
    finally:
        server.close()


async def test_calling_into_a_missing_namespace_is_not_found(ns_dir: str) -> None:
    with pytest.raises(NotFound):
        await netns.run_in(os.path.join(ns_dir, "nope"), lambda: None)
    assert not netns.exists(os.path.join(ns_dir, "nope"))


async def test_event_loop_thread_stays_in_the_host_namespace(ns_dir: str) -> None:
    before = os.stat("/proc/thread-self/ns/net").st_ino
    path = await netns.create("sb-5", ns_dir)
    await netns.interfaces(path)
    assert os.stat("/proc/thread-self/ns/net").st_ino == before
