"""Interface flags and names through ioctl, in the calling thread's network namespace.

A pod's start brings its loopback up and its stop takes eth0 down and renames it
(netns.retire_interface). Through netlink (pyroute2) each of those costs an
IPRoute socket, a dump of every link to find one by name and a parsed reply: about
2 ms a step, on the critical path of RunPodSandbox and StopPodSandbox. The
SIOCGIFFLAGS/SIOCSIFFLAGS/SIOCSIFNAME ioctls on a datagram socket do the same in
microseconds. A socket belongs to the network namespace of the thread that opens
it, so these act wherever the caller's thread stands (netns.run_in). Links are
made, deleted and read in detail through pyroute2 still.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct

# linux/sockios.h
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCSIFNAME = 0x8923
# linux/if.h
IFF_UP = 0x1
IFNAMSIZ = 16
# struct ifreq: the name, then a 24-byte union (flags are its first short).
_IFREQ_SIZE = 40


def _control_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)


def _name_field(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b"\0" in raw:
        raise ValueError(f"{name!r} is not a valid interface name (1 to {IFNAMSIZ - 1} bytes, no '/')")
    return raw.ljust(IFNAMSIZ, b"\0")


def _ifreq(name: str, value: bytes = b"") -> bytes:
    return (_name_field(name) + value).ljust(_IFREQ_SIZE, b"\0")


def _get_flags(sock: socket.socket, name: str) -> int:
    reply = fcntl.ioctl(sock, _SIOCGIFFLAGS, _ifreq(name))
    return int(struct.unpack_from("H", reply, IFNAMSIZ)[0])


def flags(name: str) -> int:
    """The interface's flags (IFF_*); OSError ENODEV when there is no such interface."""
    with _control_socket() as sock:
        return _get_flags(sock, name)


def set_up(name: str, up: bool = True) -> None:
    """Brings the interface up (or down); OSError ENODEV when there is no such interface."""
    with _control_socket() as sock:
        current = _get_flags(sock, name)
        wanted = current | IFF_UP if up else current & ~IFF_UP
        if wanted != current:
            fcntl.ioctl(sock, _SIOCSIFFLAGS, _ifreq(name, struct.pack("H", wanted & 0xFFFF)))


def rename(name: str, new_name: str) -> None:
    """Renames an interface; take it down first, as most kernels refuse one that is up (EBUSY)."""
    with _control_socket() as sock:
        fcntl.ioctl(sock, _SIOCSIFNAME, _ifreq(name, _name_field(new_name)))


def index(name: str) -> int | None:
    """The interface's index, or None when there is no such interface here."""
    _name_field(name)
    try:
        return socket.if_nametoindex(name)
    except OSError as exc:
        if exc.errno in (None, errno.ENODEV, errno.ENXIO):  # CPython sets no errno for "no such name"
            return None
        raise
