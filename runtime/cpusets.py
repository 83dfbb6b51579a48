"""Cpuset lists (`0-3,8`) checked against the CPUs and memory nodes this node has.

The kernel refuses a cpuset naming a CPU or memory node that is not online
with a bare EINVAL from deep inside the runtime's cgroup write; checked here,
the caller learns which field names what the node lacks.
"""

from __future__ import annotations

from pathlib import Path

from crishim.runtime.errors import InvalidArgument

ONLINE_CPUS = Path("/sys/devices/system/cpu/online")
ONLINE_NODES = Path("/sys/devices/system/node/online")


def parse_list(text: str) -> set[int]:
    """The members of a kernel list such as `0-3,8`; ValueError when it is not one."""
    members: set[int] = set()
    for part in text.strip().split(","):
        first, dash, last = part.strip().partition("-")
        low = int(first)
        high = int(last) if dash else low
        if low < 0 or high < low or high - low > 65536:
            raise ValueError(f"bad range {part!r}")
        members.update(range(low, high + 1))
    return members


def _online(path: Path) -> set[int]:
    try:
        return parse_list(path.read_text())
    except (OSError, ValueError):
        return {0}  # no NUMA directory: one node (or CPU) 0


def check(value: str, field: str, *, memory_nodes: bool) -> str:
    """`value` unchanged when every member is online; InvalidArgument naming the field otherwise."""
    if not value:
        return value
    kind = "memory nodes" if memory_nodes else "CPUs"
    try:
        wanted = parse_list(value)
    except ValueError as exc:
        raise InvalidArgument(f"{field} {value!r} is not a list such as 0-3,8 ({exc})") from exc
    online = _online(ONLINE_NODES if memory_nodes else ONLINE_CPUS)
    missing = sorted(wanted - online)
    if missing:
        raise InvalidArgument(
            f"{field} {value!r} names {kind} this node does not have online ({missing[:8]}); "
            f"online: {format_list(online)}"
        )
    return value


def format_list(members: set[int]) -> str:
    """The kernel's compact form of a set: {0, 1, 2, 5} -> `0-2,5`."""
    ranges: list[str] = []
    for n in sorted(members):
        if ranges and ranges[-1].split("-")[-1] == str(n - 1):
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{n}"
        else:
            ranges.append(str(n))
    return ",".join(ranges)
