"""A transient systemd scope for a process the daemon started, asked of systemd over D-Bus.

Under the systemd cgroup driver every process belongs to a unit, and conmon gets a
scope of its own in its pod's slice (CRI-O's `conmon_cgroup = "pod"`). `systemd-run
--scope` does that for a program it then execs, at the price of one more program's
start per container (it loads libsystemd-shared, several MB to relocate). CRI-O and
runc ask systemd themselves; so does this module: `StartTransientUnit` with the
process's PID, sent on the socket systemd keeps for root (/run/systemd/private, a
peer-to-peer D-Bus connection: no dbus-daemon needed, no Hello), then a wait until
the kernel shows the process in the scope's cgroup, which is when systemd's job ran.

jeepney encodes and decodes the messages; the connection itself is a few lines of
socket code here, since jeepney's connection classes always greet a bus daemon.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from jeepney import HeaderFields, Message, MessageType, Parser
from jeepney.auth import BEGIN, Authenticator
from jeepney.wrappers import DBusAddress, DBusErrorResponse, new_method_call, unwrap_msg

from .errors import FailedPrecondition, Unavailable

SYSTEMD_PRIVATE_SOCKET = Path("/run/systemd/private")
MANAGER = DBusAddress(
    "/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1", interface="org.freedesktop.systemd1.Manager"
)
CALL_TIMEOUT = 10.0  # systemd answers in milliseconds; a hung PID 1 must not hang a CRI call for ever
MOVE_TIMEOUT = 10.0  # from the job's queueing to the process's move, the same bound
MOVE_POLL = 0.001


def start_scope(unit: str, slice_: str, pid: int | list[int], description: str, proc: str = "/proc") -> None:
    """Puts `pid` (and so the children it forks later) into the new transient scope `unit` in `slice_`.

    Like `systemd-run --scope --collect`: the scope ends once its processes have, and is
    unloaded even after a failure. Returns once the process is in the scope's cgroup.
    Raises FailedPrecondition when systemd refuses (a unit of that name exists, a bad
    slice name) and Unavailable when it cannot be reached or does not act in time.
    `pid` may be a list of several, all moved in the one call.
    """
    pids = [pid] if isinstance(pid, int) else list(pid)
    properties: list[tuple[str, tuple[str, Any]]] = [
        ("Description", ("s", description)),
        ("Slice", ("s", slice_)),
        ("PIDs", ("au", pids)),
        ("CollectMode", ("s", "inactive-or-failed")),
    ]
    call = new_method_call(MANAGER, "StartTransientUnit", "ssa(sv)a(sa(sv))", (unit, "fail", properties, []))
    try:
        unwrap_msg(call_systemd(call))
    except DBusErrorResponse as exc:
        raise FailedPrecondition(f"systemd refused the scope {unit} in {slice_}: {exc}") from None
    for moved in pids:
        _wait_in_cgroup_of(moved, unit, proc)


def call_systemd(call: Message, path: Path = SYSTEMD_PRIVATE_SOCKET, timeout: float = CALL_TIMEOUT) -> Message:
    """Sends one method call to systemd and returns its reply (a method return or an error)."""
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            authenticator = Authenticator()
            for request in authenticator:
                sock.sendall(request)
                authenticator.feed(sock.recv(1024))
            sock.sendall(BEGIN)
            serial = 1
            sock.sendall(call.serialise(serial=serial))
            parser = Parser()
            while True:
                message = parser.get_next_message()
                if message is None:
                    sock.settimeout(max(deadline - time.monotonic(), 0.001))
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionResetError("systemd closed the connection before it answered")
                    parser.add_data(data)
                elif message.header.message_type in (MessageType.method_return, MessageType.error) and (
                    message.header.fields.get(HeaderFields.reply_serial) == serial
                ):
                    return message
    except (OSError, TimeoutError) as exc:
        raise Unavailable(f"cannot reach systemd at {path}: {exc}; is PID 1 systemd?") from None


def _wait_in_cgroup_of(pid: int, unit: str, proc: str) -> None:
    """Until /proc/PID/cgroup names `unit`: systemd answers the call before its job has run."""
    suffix = f"/{unit}"
    deadline = time.monotonic() + MOVE_TIMEOUT
    while True:
        try:
            lines = Path(proc, str(pid), "cgroup").read_text().splitlines()
        except OSError as exc:
            raise Unavailable(f"process {pid} ended before systemd moved it into {unit}: {exc}") from None
        if any(line.rstrip().endswith(suffix) for line in lines):
            return
        if time.monotonic() > deadline:
            raise Unavailable(f"systemd did not move process {pid} into {unit} within {MOVE_TIMEOUT:.0f}s")
        time.sleep(MOVE_POLL)
