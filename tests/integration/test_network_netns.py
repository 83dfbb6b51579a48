"""Pinned network namespaces, for real (needs root)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from crishim.runtime.network import ifctl, netns
from crishim.runtime.network.errors import FailedPrecondition, NotFound
from pyroute2 import IPRoute

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


def _links_here() -> dict[str, int]:
    """Name -> flags of every link in the calling thread's namespace; a link deleted between the
    listing and its flags (a retired eth0 goes in the background) is left out, as it would be a
    moment later."""
    found = {}
    for _, name in socket.if_nameindex():
        try:
            found[name] = ifctl.flags(name)
        except OSError as error:
            if error.errno != errno.ENODEV:
                raise
    return found


def _add_veth_pair(name: str) -> None:
    """Both ends here: the test kernel may lack the dummy driver."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": name + "p"})


async def test_ifctl_sets_flags_and_names_in_the_thread_s_namespace_only(ns_dir: str) -> None:
    path = await netns.create("sb-ifctl", ns_dir)
    await netns.run_in(path, _add_veth_pair, "d0")
    assert await netns.run_in(path, ifctl.index, "d0") is not None
    assert ifctl.index("d0p") is None  # made in the pod's namespace, not in the test's
    assert not await netns.run_in(path, ifctl.flags, "d0") & ifctl.IFF_UP

    await netns.run_in(path, ifctl.set_up, "d0")
    assert await netns.run_in(path, ifctl.flags, "d0") & ifctl.IFF_UP

    await netns.run_in(path, ifctl.set_up, "d0", False)
    await netns.run_in(path, ifctl.rename, "d0", "d1")
    links = await netns.run_in(path, _links_here)
    assert set(links) == {"lo", "d1", "d0p"}
    assert not links["d1"] & ifctl.IFF_UP
    assert links["lo"] & ifctl.IFF_UP
    assert await netns.run_in(path, ifctl.index, "d0") is None
    with pytest.raises(OSError, match="No such device") as missing:
        await netns.run_in(path, ifctl.set_up, "d0")
    assert missing.value.errno == errno.ENODEV


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b"])
def test_ifctl_refuses_a_name_the_kernel_cannot_hold(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid interface name"):
        ifctl.index(name)


def _veth_to(path: str, host_name: str) -> None:
    with IPRoute() as ipr:
        ipr.link("add", ifname=host_name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": path})
        ipr.link("set", index=ipr.link_lookup(ifname=host_name)[0], state="up")


def _eth0_up() -> None:
    ifctl.set_up("eth0")


async def test_retired_interface_frees_its_name_at_once_and_is_gone_when_the_namespace_goes(ns_dir: str) -> None:
    path = await netns.create("sb-retire", ns_dir)
    host_name = f"crt{os.getpid() % 100000}"
    await asyncio.to_thread(_veth_to, path, host_name)
    await netns.run_in(path, _eth0_up)

    assert await netns.retire_interface(path, "eth0")
    links = await netns.run_in(path, _links_here)
    assert "eth0" not in links  # a CNI DEL that follows finds it gone
    assert netns.RETIRED_IFNAME not in links or not links[netns.RETIRED_IFNAME] & ifctl.IFF_UP
    assert not await netns.retire_interface(path, "eth0")

    await netns.remove(path)
    assert ifctl.index(host_name) is None, "the host side of the veth outlived RemovePodSandbox's netns.remove"
    assert not netns.exists(path)
