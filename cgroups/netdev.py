"""Interface counters of a pod's network namespace, from /proc/<pid>/net/dev of a process in it.

cAdvisor reads them the same way, through the pod's first process: no need to enter
the namespace. The loopback interface is left out, as cAdvisor and PodSandboxStats
leave it out.
"""

from __future__ import annotations

import os

from .cadvisor import NetworkCounters

PROC = "/proc"


def parse_net_dev(text: str) -> list[NetworkCounters]:
    """The interfaces of a net/dev text, in its order, without `lo`."""
    out = []
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 12 or not all(f.isdigit() for f in fields[:12]):
            continue  # the two header lines
        name = name.strip()
        if name == "lo":
            continue
        rx_bytes, rx_packets, rx_errors, rx_dropped = (int(f) for f in fields[0:4])
        tx_bytes, tx_packets, tx_errors, tx_dropped = (int(f) for f in fields[8:12])
        out.append(
            NetworkCounters(
                interface=name,
                rx_bytes=rx_bytes,
                tx_bytes=tx_bytes,
                rx_errors=rx_errors,
                tx_errors=tx_errors,
                rx_packets=rx_packets,
                tx_packets=tx_packets,
                rx_dropped=rx_dropped,
                tx_dropped=tx_dropped,
            )
        )
    return out


def read_net_dev(pid: int, proc: str = PROC) -> list[NetworkCounters]:
    """The counters of the namespace `pid` lives in; [] when the process is gone."""
    try:
        with open(os.path.join(proc, str(pid), "net", "dev")) as f:
            return parse_net_dev(f.read())
    except OSError:
        return []
