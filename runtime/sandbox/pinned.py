"""The IPC and UTS namespaces of a pod without an infra container, pinned by bind mounts.

A pod that does not share one PID namespace among its containers needs no pause
process: what the pause process held for it, its IPC and UTS namespaces, is held
by bind mounts of the namespace files instead, as the network namespace already
is. That saves a `runc create`, a `runc start`, a kill and a `runc delete` per
pod, the larger part of RunPodSandbox and StopPodSandbox (CRI-O does the same by
default, with its `pinns` helper).

The namespaces are made by unshare(2) in a fresh thread that ends right after,
the way runtime/network/netns.py makes a pod's netns: a pooled thread must never
be left in a pod's namespace. The same thread sets what the pause container's
runtime would have set in them: the hostname and the pod's sysctls, the network
ones after joining the pod's pinned netns. A pod whose containers share one PID
namespace gets its holder (runtime/sandbox/pidholder.py) started from that thread
too, so that it runs in the pod's namespaces.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from crishim.oci.mounttable import MS_BIND, is_mount_point, mount, unmount
from crishim.runtime.errors import Internal, InvalidArgument
from crishim.runtime.network import netns
from crishim.runtime.sandbox import pidholder
from crishim.runtime.validate import sysctl_namespace

_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUTS = 0x04000000
_FLAGS = {"ipc": _CLONE_NEWIPC, "uts": _CLONE_NEWUTS}
PIN_DIR = "ns"


@dataclass(frozen=True, slots=True)
class PodNamespaces:
    """What to pin for one pod: each kind it holds of its own, and what to set in them."""

    directory: Path  # the pins go here, one file per kind
    kinds: tuple[str, ...]  # "ipc", "uts": the ones the pod does not share with the host
    hostname: str = ""  # set in the UTS namespace
    netns_path: str | None = None  # joined to set the net.* sysctls
    sysctls: Mapping[str, str] = field(default_factory=dict)  # dotted, checked by validate.sysctls


@dataclass(frozen=True, slots=True)
class HolderRequest:
    """A PID namespace holder to start in the pod's namespaces once they are pinned."""

    root: pidholder.HolderRoot
    sandbox_id: str
    log_path: Path
    place: Callable[[pidholder.Holder], None]  # blocking: into the pod's cgroup


def pin_paths(directory: Path, kinds: tuple[str, ...]) -> dict[str, str]:
    return {kind: str(directory / kind) for kind in kinds}


async def pin(wanted: PodNamespaces) -> dict[str, str]:
    """Makes and pins the pod's namespaces; returns kind -> pin path. Nothing is left on failure."""
    if not wanted.kinds:
        return {}
    try:
        return await asyncio.wrap_future(netns.run_in_fresh_thread(lambda: _pin_here(wanted)))
    except OSError as exc:
        raise Internal(f"cannot pin the pod's {' and '.join(wanted.kinds)} namespaces: {exc}") from exc


def start_pin_and_hold(
    wanted: PodNamespaces, request: HolderRequest
) -> concurrent.futures.Future[tuple[dict[str, str], pidholder.Holder]]:
    """pin(), then the PID namespace holder started in those namespaces and placed by
    `request.place`, all in a fresh thread; its future ends with both, or with nothing left.

    A future of the thread's own, not a coroutine: a RunPodSandbox cancelled meanwhile
    cannot stop the thread, so its undo waits on this for what to end.
    """

    def here() -> tuple[dict[str, str], pidholder.Holder]:
        paths = _pin_here(wanted) if wanted.kinds else {}
        try:
            held = pidholder.spawn(request.root, request.sandbox_id, request.log_path)
        except BaseException:
            unpin(paths)
            raise
        try:
            request.place(held)
        except BaseException:
            pidholder.end(held, request.root.tag(request.sandbox_id))
            unpin(paths)
            raise
        return paths, held

    return netns.run_in_fresh_thread(here)


async def pin_and_hold(
    started: concurrent.futures.Future[tuple[dict[str, str], pidholder.Holder]],
) -> tuple[dict[str, str], pidholder.Holder]:
    """What start_pin_and_hold() made, once it has."""
    try:
        return await asyncio.wrap_future(started)
    except OSError as exc:
        raise Internal(f"cannot hold the pod's namespaces: {exc}") from exc


def unpin(paths: Mapping[str, str]) -> None:
    """Unmounts and deletes the pins; gone already is fine (StopPodSandbox and its retries)."""
    for path in paths.values():
        unmount(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def all_pinned(paths: Mapping[str, str]) -> bool:
    """Whether every pin still holds its namespace (a reboot leaves the files, not the mounts)."""
    return all(is_mount_point(path) for path in paths.values())


def _pin_here(wanted: PodNamespaces) -> dict[str, str]:
    """Blocking, in a fresh thread that ends after: unshare, pin, then name and tune."""
    paths = pin_paths(wanted.directory, wanted.kinds)
    wanted.directory.mkdir(mode=0o711, exist_ok=True)
    try:
        for path in paths.values():
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
        flags = 0
        for kind in wanted.kinds:
            flags |= _FLAGS[kind]
        _check(_libc().unshare(flags), f"unshare({' | '.join(wanted.kinds)})")
        for kind, path in paths.items():
            mount(f"/proc/thread-self/ns/{kind}", path, "none", MS_BIND, None, what=f"pin the {kind} namespace")
        if "uts" in paths and wanted.hostname:
            name = wanted.hostname.encode()
            _check(_libc().sethostname(name, len(name)), f"sethostname({wanted.hostname!r})")
        _set_sysctls(wanted, own={"ipc", "uts"})
        if wanted.netns_path:
            netns.enter(wanted.netns_path)
            _set_sysctls(wanted, own={"net"})
    except BaseException:
        unpin(paths)
        raise
    return paths


def _set_sysctls(wanted: PodNamespaces, own: set[str]) -> None:
    """Writes the pod's sysctls scoped by the namespaces in `own`, which this thread is in."""
    for key, value in wanted.sysctls.items():
        if sysctl_namespace(key) not in own:
            continue
        try:
            Path("/proc/sys", *key.split(".")).write_text(value)
        except OSError as exc:
            raise InvalidArgument(f"config.linux.sysctls: {key}={value!r} cannot be set: {exc.strerror}") from None


_lib: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(None, use_errno=True)
    return _lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
