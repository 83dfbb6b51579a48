"""Helpers the security, mount, OOM, AppArmor and user-namespace specs share beyond conformance/cri.py.

critest checks many of these specs through the container's log file (a pod with a
log directory, the container's `log_path` under it), through host mounts made with
mount(2), and through the features Status advertises for the runtime handler it was
told to use. Those pieces live here so each test reads like the spec it mirrors.

The runtime handler defaults to "" (the daemon's default handler), as critest does
without --runtime-handler; set CRITEST_RUNTIME_HANDLER to run the suite against
another one (for example `crun`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from crishim.cri_api import api_pb2 as pb

from conformance import cri

RUNTIME_HANDLER = os.environ.get("CRITEST_RUNTIME_HANDLER", "")
# How long critest waits for a container to reach a state (Eventually(..., time.Minute)).
STATE_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One CRI log line: the stream and the content with its newline, as critest's parseCRILog keeps it."""

    stream: str
    log: str


@contextlib.contextmanager
def log_temp_dir(pod_name: str) -> Iterator[Path]:
    """critest's createLogTempDir: a temp dir with a subdirectory named after the pod; yields that."""
    host_path = Path(tempfile.mkdtemp(prefix="podLogTest"))
    pod_log = host_path / pod_name
    pod_log.mkdir(mode=0o777)
    try:
        yield pod_log
    finally:
        shutil.rmtree(host_path, ignore_errors=True)


@contextlib.contextmanager
def pod_with_log_directory(
    daemon: cri.HasChannel,
    *,
    handler: str = RUNTIME_HANDLER,
    security_context: pb.LinuxSandboxSecurityContext | None = None,
    prefix: str = "PodSandbox-with-log-directory-",
) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    """critest's createPodSandboxWithLogDirectory: a default pod whose log_directory is a fresh temp dir."""
    name = prefix + cri.new_uuid()
    with log_temp_dir(name) as log_dir:
        config = cri.pod_config(daemon, prefix, log_directory=str(log_dir), security_context=security_context)
        config.metadata.name = name
        with cri.pod(daemon, config, handler=handler) as (pod_id, cfg):
            yield pod_id, cfg


def log_entries(pod_config: pb.PodSandboxConfig, log_path: str) -> list[LogEntry]:
    """critest's parseLogLine: every line of the container's CRI log file."""
    text = (Path(pod_config.log_directory) / log_path).read_text(errors="replace")
    return [LogEntry(stream=stream, log=content + "\n") for _, stream, _, content in cri.parse_cri_log(text)]


def assert_log_contains(pod_config: pb.PodSandboxConfig, log_path: str, expected: str, stream: str = "stdout") -> None:
    """critest's verifyLogContents: some log line on `stream` equals `expected` exactly."""
    entries = log_entries(pod_config, log_path)
    assert any(e.log == expected and e.stream == stream for e in entries), (
        f"expected log {expected!r} (stream={stream}) not found in {entries}"
    )


def assert_log_matches(pod_config: pb.PodSandboxConfig, log_path: str, pattern: str, stream: str = "stdout") -> None:
    """critest's verifyLogContentsRe: some log line on `stream` matches the regular expression."""
    entries = log_entries(pod_config, log_path)
    regex = re.compile(pattern)
    assert any(regex.search(e.log) and e.stream == stream for e in entries), (
        f"expected log pattern {pattern!r} (stream={stream}) not found in {entries}"
    )


def wait_running(daemon: cri.HasChannel, container_id: str) -> pb.ContainerStatus:
    return cri.wait_state(daemon, container_id, pb.CONTAINER_RUNNING, timeout=STATE_TIMEOUT)


def wait_exited(daemon: cri.HasChannel, container_id: str) -> pb.ContainerStatus:
    return cri.wait_state(daemon, container_id, pb.CONTAINER_EXITED, timeout=STATE_TIMEOUT)


def exec_fails(resp: pb.ExecSyncResponse) -> bool:
    """critest's ExecSync client returns an error when the command exits non-zero."""
    return bool(resp.exit_code != 0)


def handler_features(daemon: cri.HasChannel, handler: str = RUNTIME_HANDLER) -> pb.RuntimeHandlerFeatures | None:
    """The features Status advertises for `handler` ("" is the default one), or None if not listed."""
    status = cri.rt(daemon).Status(pb.StatusRequest(), timeout=cri.CALL_TIMEOUT)
    for h in status.runtime_handlers:
        if h.name == handler:
            return h.features
    return None


# ---- host mounts (critest calls mount(2) directly) ------------------------------------------

MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(source: str | Path, target: str | Path, fstype: str = "", flags: int = 0) -> None:
    """mount(2); raises OSError with the errno and paths on failure."""
    src = os.fsencode(str(source)) if source else None
    fs = fstype.encode() if fstype else None
    if _libc.mount(src, os.fsencode(str(target)), fs, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source!r} on {target!r} (flags {flags:#x}): {os.strerror(err)}")


def umount(target: str | Path, flags: int = MNT_DETACH) -> None:
    """umount2(2) (lazy by default, as critest's cleanup does); raises OSError on failure."""
    if _libc.umount2(os.fsencode(str(target)), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target!r}: {os.strerror(err)}")


def is_mountpoint(path: str | Path) -> bool:
    """True if `path` is the target of a mount in this process's mount namespace."""
    wanted = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mount_point = fields[4].encode().decode("unicode_escape")
            if mount_point == wanted:
                return True
    return False


def umount_all(path: str | Path) -> None:
    """Lazily unmounts every mount stacked on `path` (cleanup after a test, whatever it left)."""
    while is_mountpoint(path):
        umount(path)
