"""Pinned network namespaces: create, remove, probe, and run code inside one.

A pod's network namespace is created before its infra container and pinned
by bind-mounting the namespace file onto `<netns_dir>/<sandbox_id>`, so it
outlives every process in it and survives a daemon restart; CNI plugins and
runc get that path.

Namespace switches happen only in a fresh, short-lived OS thread that ends
right after the work: setns(2) changes the calling *thread*, and a pooled
thread left in a pod's namespace would poison every later job that lands on
it. The fresh thread also keeps the event loop free, as to_thread would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from crishim.oci.mounttable import MS_BIND, MS_REC, MS_SHARED, is_mount_point, mount, unmount
from crishim.runtime.network import ifctl
from crishim.runtime.network.errors import FailedPrecondition, Internal, InvalidArgument, NotFound

DEFAULT_NETNS_DIR = "/run/crishim/netns"
log = logging.getLogger("crishim.network")

_CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@dataclass(frozen=True, slots=True)
class IfaceCounters:
    """Byte and error counters of one interface, as PodSandboxStats reports them."""

    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def pin_path(sandbox_id: str, netns_dir: str = DEFAULT_NETNS_DIR) -> str:
    """Where the namespace of `sandbox_id` is pinned; rejects IDs that could escape the dir."""
    if not sandbox_id or "/" in sandbox_id or sandbox_id in (".", "..") or "\0" in sandbox_id:
        raise InvalidArgument(f"sandbox ID {sandbox_id!r} cannot name a network namespace file")
    return os.path.join(netns_dir, sandbox_id)


def exists(path: str) -> bool:
    """True when `path` is a live pinned namespace (an nsfs bind mount), not just a file.

    Every namespace file lives on the one nsfs superblock, so comparing the
    device with our own namespace's file is enough and needs no statfs.
    """
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def run_in_fresh_thread(fn: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Runs `fn` in a new OS thread that ends with it: the only kind allowed to change namespaces."""
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def body() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn())
        except BaseException as exc:  # handed to the waiter, the thread just ends
            fut.set_exception(exc)

    threading.Thread(target=body, name="crishim-netns", daemon=True).start()
    return fut


def enter(path: str) -> None:
    """Moves the calling thread (a fresh one, see run_in_fresh_thread) into the netns at `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {path} does not exist") from None
    try:
        _check(_c().setns(fd, _CLONE_NEWNET), f"setns({path})")
    finally:
        os.close(fd)


async def run_in(path: str, fn: Callable[..., T], *args: Any, discard: Callable[[T], None] | None = None) -> T:
    """Run blocking `fn(*args)` inside the namespace at `path` without blocking the loop.

    Sockets opened by `fn` stay bound to that namespace after it returns,
    which is how port-forward can dial the pod's localhost. When the caller is
    cancelled while `fn` runs, `discard` receives what it returns (a socket to close).
    """
    if not exists(path):
        raise NotFound(f"network namespace {path} does not exist or is not pinned")

    def inside() -> T:
        enter(path)
        return fn(*args)

    future = run_in_fresh_thread(inside)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if discard is not None:
            future.add_done_callback(functools.partial(_discard_result, discard))
        raise


def _discard_result(discard: Callable[[T], None], future: concurrent.futures.Future[T]) -> None:
    if not future.cancelled() and future.exception() is None:
        discard(future.result())


def _make_dir_shared(netns_dir: str) -> None:
    """Make the pin directory a shared mount, as iproute2 does for /run/netns.

    Mount namespaces cloned later (by other tools on the node) then see our
    unmounts too, so they do not keep a removed pod's namespace alive.
    """
    shared = f"make {netns_dir} shared"
    try:
        mount("none", netns_dir, "none", MS_SHARED | MS_REC, None, what=shared)
        return
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    # Not a mount point yet: bind it onto itself first.
    mount(netns_dir, netns_dir, "none", MS_BIND | MS_REC, None, what=f"bind {netns_dir}")
    mount("none", netns_dir, "none", MS_SHARED | MS_REC, None, what=shared)


def _loopback_up() -> None:
    try:
        ifctl.set_up("lo")
    except OSError as exc:
        raise Internal(f"cannot bring up the new network namespace's loopback: {exc}") from exc


def _create_pinned(path: str) -> None:
    netns_dir = os.path.dirname(path)
    os.makedirs(netns_dir, mode=0o755, exist_ok=True)
    if not is_mount_point(netns_dir):
        _make_dir_shared(netns_dir)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
    except FileExistsError:
        raise FailedPrecondition(f"network namespace pin {path} already exists; remove the old sandbox first") from None
    try:
        # This thread alone moves to the new namespace and then ends.
        _check(_c().unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        mount("/proc/thread-self/ns/net", path, "none", MS_BIND, None, what=f"bind-mount the namespace on {path}")
        _loopback_up()
    except BaseException:
        _remove_pin(path)
        raise


async def create(sandbox_id: str, netns_dir: str = DEFAULT_NETNS_DIR) -> str:
    """Create a new network namespace pinned at `<netns_dir>/<sandbox_id>`, loopback up.

    Returns the pin path to hand to CNI (CNI_NETNS) and to the OCI spec.
    """
    path = pin_path(sandbox_id, netns_dir)
    try:
        await asyncio.wrap_future(run_in_fresh_thread(lambda: _create_pinned(path)))
    except OSError as exc:
        raise Internal(f"cannot create network namespace {path}: {exc}") from exc
    return path


def _remove_pin(path: str) -> None:
    unmount(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


async def remove(path: str) -> None:
    """Unmount and delete a pin; removing one already gone is fine (RemovePodSandbox is idempotent).

    An interface retired in it (retire_interface) is deleted first, so none outlives the call.
    """
    await _deletion_done(path)
    try:
        await asyncio.to_thread(_remove_pin, path)
    except OSError as exc:
        raise Internal(f"cannot remove network namespace {path}: {exc}") from exc


def release_dir(netns_dir: str) -> None:
    """Undo the shared self-bind of a pin directory (for tests and tidy shutdowns)."""
    with contextlib.suppress(OSError):
        unmount(os.path.realpath(netns_dir), stacked=True)


def _iproute() -> Any:
    """pyroute2 is imported on first use: it weighs ~20 MB that an idle daemon need not carry."""
    from pyroute2 import IPRoute

    return IPRoute()


def _stats_here() -> list[IfaceCounters]:
    out = []
    with _iproute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            st = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS")
            if name is None or st is None:
                continue
            out.append(
                IfaceCounters(
                    name=name,
                    rx_bytes=int(st["rx_bytes"]),
                    rx_errors=int(st["rx_errors"]),
                    tx_bytes=int(st["tx_bytes"]),
                    tx_errors=int(st["tx_errors"]),
                )
            )
    return out


async def interface_stats(path: str) -> list[IfaceCounters]:
    """Counters of every interface in the pod's namespace (PodSandboxStats.network)."""
    return await run_in(path, _stats_here)


def _addresses_here(ifname: str) -> list[str]:
    with _iproute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise NotFound(f"no interface {ifname} in the network namespace")
        return [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=idx[0])
            if a.get_attr("IFA_ADDRESS") is not None
        ]


async def addresses(path: str, ifname: str = "eth0") -> list[str]:
    """Addresses ("ip/prefix") of `ifname` inside the namespace, IPv4 and IPv6 alike."""
    return await run_in(path, _addresses_here, ifname)


# The name an interface takes while the kernel removes it (at most 15 bytes).
RETIRED_IFNAME = "crishim-gone"
# Retired interfaces still being deleted, by namespace pin path.
_deleting: dict[str, asyncio.Future[None]] = {}


def _retire_here(ifname: str) -> int | None:
    """Takes `ifname` down and renames it; returns its index, or None when there is none."""
    index = ifctl.index(ifname)
    if index is None:
        return None
    ifctl.set_up(ifname, False)
    ifctl.rename(ifname, RETIRED_IFNAME)
    return index


def _delete_here(index: int) -> None:
    with _iproute() as ipr:
        ipr.link("del", index=index)


async def retire_interface(path: str, ifname: str) -> bool:
    """Frees the name `ifname` in the namespace at once and deletes the link in the background.

    Deleting a veth waits for an RCU grace period in the kernel (~15 ms), which a CNI
    plugin's DEL would spend in line with the plugins after it, and StopPodSandbox with
    it. Down and renamed (~2 ms), the interface carries no traffic and no longer answers
    to its name, so DEL finds it gone and releases the IP at once; `remove` of the
    namespace waits for the deletion to end. False when there is no such interface.
    """
    index = await run_in(path, _retire_here, ifname)
    if index is None:
        return False
    deleting = asyncio.ensure_future(run_in(path, _delete_here, index))
    _deleting[path] = deleting
    deleting.add_done_callback(functools.partial(_deleted, path))
    return True


def _deleted(path: str, deleting: asyncio.Future[None]) -> None:
    if _deleting.get(path) is deleting:
        del _deleting[path]
    if not deleting.cancelled() and deleting.exception() is not None:
        log.warning("retired interface in %s not deleted, it goes with the namespace: %s", path, deleting.exception())


async def _deletion_done(path: str) -> None:
    deleting = _deleting.get(path)
    if deleting is not None:
        with contextlib.suppress(Exception):  # logged by _deleted
            await asyncio.shield(deleting)


def _link_names() -> list[str]:
    with _iproute() as ipr:
        return [n for n in (link.get_attr("IFLA_IFNAME") for link in ipr.get_links()) if n]


async def host_interfaces() -> list[str]:
    """Interface names of the daemon's own (host) namespace: what a host-network pod sees."""
    return await asyncio.to_thread(_link_names)


async def interfaces(path: str) -> list[str]:
    """Interface names inside the namespace at `path`."""
    return await run_in(path, _link_names)
