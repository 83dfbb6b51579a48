"""Linux capability names, the default set, and the host's bounding set.

Every set we put in a spec is clamped to the bounding set of this process:
runc/crun fail to start a container asking for a capability the host does
not have (this machine lacks CAP_SYS_RESOURCE, for instance).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from .errors import InvalidArgument

# Index = capability number (linux/capability.h).
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

# The set containerd and CRI-O give an unprivileged container.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip


def normalize(name: str) -> str:
    """'net_admin', 'NET_ADMIN' and 'CAP_NET_ADMIN' all name CAP_NET_ADMIN; 'ALL' stays."""
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in ALL_CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}: use a name like NET_ADMIN or CAP_NET_ADMIN")
    return full


def parse_mask(hex_mask: str) -> frozenset[str]:
    """Names of the bits set in a /proc/PID/status Cap* hex mask."""
    mask = int(hex_mask, 16)
    return frozenset(n for i, n in enumerate(ALL_CAPABILITIES) if mask >> i & 1)


def read_status_caps(field: str, status_path: Path = Path("/proc/self/status")) -> frozenset[str]:
    """The named Cap* line (CapBnd, CapEff...) of a /proc status file."""
    for line in status_path.read_text().splitlines():
        if line.startswith(field + ":"):
            return parse_mask(line.split(":", 1)[1].strip())
    raise FileNotFoundError(f"{status_path} has no {field} line")


@lru_cache(maxsize=1)
def host_bounding_set() -> frozenset[str]:
    """Capabilities this daemon can hand to a container (its CapBnd)."""
    return read_status_caps("CapBnd")


def resolve(
    add: Iterable[str],
    drop: Iterable[str],
    *,
    base: Iterable[str] = DEFAULT_CAPABILITIES,
    bounding: frozenset[str] | None = None,
) -> list[str]:
    """The container's capability set: base + add - drop, clamped to `bounding`.

    Order: drop ALL empties the base, then the adds (ALL = every capability),
    then the named drops; so drop [ALL] + add [NET_RAW] = just NET_RAW, and
    a capability both added and dropped by name is dropped.
    """
    bound = host_bounding_set() if bounding is None else bounding
    adds = [normalize(c) for c in add]
    drops = [normalize(c) for c in drop]
    caps: set[str] = set() if "ALL" in drops else set(base)
    caps.update(ALL_CAPABILITIES if "ALL" in adds else adds)
    caps.difference_update(d for d in drops if d != "ALL")
    return sorted(caps & bound, key=ALL_CAPABILITIES.index)
