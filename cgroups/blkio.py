"""Block I/O of one cgroup, per device: bytes and operations, by kind of operation.

v1 keeps them in blkio files of lines "MAJ:MIN Op value" (Op is Read, Write, Sync,
Async, Discard or Total), in up to three sets: the CFQ scheduler's, BFQ's and the
throttling layer's; the first set that has any device is the one in use. v2 has one
io.stat, a line per device of "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..". Both
come out as the same records, named Read and Write as the v1 files and cAdvisor
name them, with the device as /dev/NAME when the kernel knows the block device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .files import read_opt_text

SYS_DEV_BLOCK = "/sys/dev/block"
# (bytes file, operations file) of each v1 set, in the order they are tried.
V1_SETS = (
    ("blkio.io_service_bytes_recursive", "blkio.io_serviced_recursive"),
    ("blkio.bfq.io_service_bytes_recursive", "blkio.bfq.io_serviced_recursive"),
    ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_serviced_recursive"),
)
_V2_KEYS = {
    "rbytes": ("bytes", "Read"),
    "wbytes": ("bytes", "Write"),
    "rios": ("ios", "Read"),
    "wios": ("ios", "Write"),
}


@dataclass(frozen=True, slots=True)
class BlkioDevice:
    major: int
    minor: int
    device: str  # "/dev/vda", or "" when no block device has that number
    bytes: Mapping[str, int] = field(default_factory=dict)  # operation -> bytes
    ios: Mapping[str, int] = field(default_factory=dict)  # operation -> count


def device_name(major: int, minor: int, sys_dev_block: str = SYS_DEV_BLOCK) -> str:
    """/dev/NAME of block device MAJ:MIN, from its uevent; "" when the kernel has none."""
    try:
        text = read_opt_text(os.path.join(sys_dev_block, f"{major}:{minor}", "uevent")) or ""
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return "/dev/" + value
    return ""


def _parse_v1(text: str) -> dict[tuple[int, int], dict[str, int]]:
    out: dict[tuple[int, int], dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or ":" not in parts[0]:
            continue  # the closing "Total N" line
        major, _, minor = parts[0].partition(":")
        try:
            out.setdefault((int(major), int(minor)), {})[parts[1]] = int(parts[2])
        except ValueError:
            continue
    return out


def read_v1(blkio_dir: str) -> tuple[BlkioDevice, ...]:
    """The devices of the first v1 set in use under `blkio_dir`."""
    for bytes_file, ios_file in V1_SETS:
        by_bytes = _parse_v1(read_opt_text(os.path.join(blkio_dir, bytes_file)) or "")
        if not by_bytes:
            continue
        by_ios = _parse_v1(read_opt_text(os.path.join(blkio_dir, ios_file)) or "")
        return tuple(
            BlkioDevice(major, minor, device_name(major, minor), ops, by_ios.get((major, minor), {}))
            for (major, minor), ops in sorted(by_bytes.items())
        )
    return ()


def parse_io_stat(text: str) -> tuple[BlkioDevice, ...]:
    """The devices of a v2 io.stat text."""
    out = []
    for line in text.splitlines():
        number, *pairs = line.split() or [""]
        major, sep, minor = number.partition(":")
        if not (sep and major.isdigit() and minor.isdigit()):
            continue
        counters: dict[str, dict[str, int]] = {"bytes": {}, "ios": {}}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key in _V2_KEYS and value.isdigit():
                kind, operation = _V2_KEYS[key]
                counters[kind][operation] = int(value)
        out.append(
            BlkioDevice(int(major), int(minor), device_name(int(major), int(minor)), counters["bytes"], counters["ios"])
        )
    return tuple(out)


def read_v2(cgroup_dir: str) -> tuple[BlkioDevice, ...]:
    return parse_io_stat(read_opt_text(os.path.join(cgroup_dir, "io.stat")) or "")
