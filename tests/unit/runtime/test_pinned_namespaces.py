"""A pod without an infra container: its IPC and UTS namespaces pinned, named and tuned, then released."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from crishim.oci.mounttable import mount_points
from crishim.runtime.errors import InvalidArgument
from crishim.runtime.network import netns
from crishim.runtime.sandbox import pinned

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates and pins namespaces")


def _inside(kind: str, pin: str, *command: str) -> str:
    """What `command` prints inside the pinned namespace (nsenter joins it as runc would)."""
    return subprocess.run(["nsenter", f"--{kind}={pin}", *command], check=True, capture_output=True, text=True).stdout


def _namespace_of(path: str) -> int:
    return os.stat(path).st_ino


def test_pins_hold_new_namespaces_with_the_hostname_and_sysctls_set(tmp_path: Path) -> None:
    host_shmmni, host_name = Path("/proc/sys/kernel/shmmni").read_text(), os.uname().nodename
    net = asyncio.run(netns.create("pinned-test", str(tmp_path / "netns")))
    try:
        wanted = pinned.PodNamespaces(
            tmp_path / "ns",
            ("ipc", "uts"),
            hostname="pod-without-pause",
            netns_path=net,
            sysctls={"kernel.shmmni": "2048", "net.ipv4.ip_unprivileged_port_start": "80"},
        )
        pins = asyncio.run(pinned.pin(wanted))
        try:
            assert pins == {"ipc": str(tmp_path / "ns" / "ipc"), "uts": str(tmp_path / "ns" / "uts")}
            assert pinned.all_pinned(pins)
            # New namespaces, not the daemon's own.
            assert _namespace_of(pins["ipc"]) != _namespace_of("/proc/self/ns/ipc")
            assert _namespace_of(pins["uts"]) != _namespace_of("/proc/self/ns/uts")
            assert _inside("uts", pins["uts"], "hostname").strip() == "pod-without-pause"
            assert _inside("ipc", pins["ipc"], "cat", "/proc/sys/kernel/shmmni").strip() == "2048"
            assert _inside("net", net, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").strip() == "80"
            # Nothing leaked into the node's own namespaces or into this thread.
            assert Path("/proc/sys/kernel/shmmni").read_text() == host_shmmni
            assert os.uname().nodename == host_name
        finally:
            pinned.unpin(pins)
        assert not pinned.all_pinned(pins)
        assert not [m for m in mount_points() if m.startswith(str(tmp_path / "ns"))]
        assert not list((tmp_path / "ns").iterdir())
        pinned.unpin(pins)  # a retried stop finds them gone
    finally:
        asyncio.run(netns.remove(net))
        netns.release_dir(str(tmp_path / "netns"))


def test_a_pod_on_the_host_network_pins_only_its_ipc_namespace(tmp_path: Path) -> None:
    pins = asyncio.run(pinned.pin(pinned.PodNamespaces(tmp_path / "ns", ("ipc",), hostname="ignored")))
    try:
        assert list(pins) == ["ipc"]
        assert not (tmp_path / "ns" / "uts").exists()
    finally:
        pinned.unpin(pins)
    assert asyncio.run(pinned.pin(pinned.PodNamespaces(tmp_path / "none", ()))) == {}


def test_a_sysctl_the_kernel_refuses_leaves_no_pin(tmp_path: Path) -> None:
    wanted = pinned.PodNamespaces(tmp_path / "ns", ("ipc", "uts"), sysctls={"kernel.shmmni": "not-a-number"})
    with pytest.raises(InvalidArgument, match=r"kernel\.shmmni='not-a-number' cannot be set"):
        asyncio.run(pinned.pin(wanted))
    assert not [m for m in mount_points() if m.startswith(str(tmp_path))]
    assert not list((tmp_path / "ns").iterdir())
