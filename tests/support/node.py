"""What node tests read beside CRI: the host's cgroup layout, a process's cgroup, systemd units.

The node tests (cgroup v2, the systemd driver, AppArmor) check what the daemon really
did by reading the kernel's files and asking systemd, never the daemon's own view of
it. They run each check on every OCI runtime the node has (`installed_runtime`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from crishim.cgroups.detect import CgroupVersion, detect
from crishim.cri_api import api_pb2 as pb

from tests.support.daemon import Daemon

CGROUP_ROOT = Path("/sys/fs/cgroup")


def pure_v2() -> bool:
    return detect().version is CgroupVersion.V2


def installed_runtime(name: str) -> str:
    """`name` if that OCI runtime (runc, crun) is on PATH; otherwise the test skips."""
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed")
    return name


def pid1_is_systemd() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def process_cgroup(pid: int) -> str:
    """The v2 cgroup of `pid` ("/kubepods.slice/.../crishim-ID.scope"), from /proc/PID/cgroup."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"process {pid} has no cgroup v2 entry in /proc/{pid}/cgroup")


def cgroup_dir(rel: str) -> Path:
    return CGROUP_ROOT / rel.lstrip("/")


def read_cgroup_file(directory: Path, name: str) -> str:
    return (directory / name).read_text().strip()


def read_kv(directory: Path, name: str) -> dict[str, int]:
    out = {}
    for line in (directory / name).read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = int(value)
    return out


def psi_total_us(directory: Path, name: str, kind: str = "some") -> int:
    """The `total=` microseconds of the `kind` line of a *.pressure file."""
    for line in (directory / name).read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == kind:
            return int(dict(f.split("=", 1) for f in fields[1:])["total"])
    raise AssertionError(f"no {kind!r} line in {directory / name}")


def container_info(daemon: Daemon, cid: str) -> dict[str, object]:
    answer = daemon.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=10)
    info: dict[str, object] = json.loads(answer.info["info"])
    return info


def container_pid(daemon: Daemon, cid: str) -> int:
    return int(container_info(daemon, cid)["pid"])  # type: ignore[call-overload]


def sandbox_pid(daemon: Daemon, sid: str) -> int:
    answer = daemon.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True), timeout=10)
    return int(json.loads(answer.info["info"])["pid"])


def container_cgroup(daemon: Daemon, cid: str) -> Path:
    """The cgroup directory the container's init process is in."""
    return cgroup_dir(process_cgroup(container_pid(daemon, cid)))


def conmon_pid(bundle: Path) -> int:
    return int((bundle / "conmon.pid").read_text().strip())


def systemctl(*args: str) -> str:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout


def units_naming(*ids: str) -> list[str]:
    """Every loaded unit (any state) whose line names one of `ids`."""
    lines = systemctl("list-units", "--all", "--plain", "--no-legend", "--no-pager").splitlines()
    return [line for line in lines if any(i in line for i in ids)]


def failed_units() -> list[str]:
    return systemctl("list-units", "--failed", "--plain", "--no-legend", "--no-pager").splitlines()


def wait_until_no_units(*ids: str, timeout: float = 15.0) -> list[str]:
    """systemd collects an emptied scope asynchronously: poll until no unit names `ids`."""
    deadline = time.monotonic() + timeout
    while True:
        left = units_naming(*ids)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def slice_active(name: str) -> bool:
    return systemctl("is-active", name).strip() == "active"


def stop_units(*names: str) -> None:
    for name in names:
        subprocess.run(["systemctl", "stop", name], capture_output=True, timeout=60, check=False)
