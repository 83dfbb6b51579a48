"""The per-pod /etc/resolv.conf, /etc/hostname and /etc/hosts files.

The kubelet always sends dns_config: for dnsPolicy Default it is empty and
the pod must get the node's resolv.conf; otherwise it lists the cluster DNS
servers, searches and options, which become the pod's file verbatim.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from crishim.runtime.network.atomicfile import write_atomic
from crishim.runtime.network.errors import InvalidArgument

HOST_RESOLV_CONF = "/etc/resolv.conf"


def _write_pod_file(path: str, text: str) -> None:
    # Rewritten at every pod start and never needed after a power loss: no fsync.
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_atomic(path, text, sync=False)


def _check_tokens(kind: str, values: Sequence[str]) -> None:
    for v in values:
        if not v or any(c.isspace() for c in v):
            raise InvalidArgument(f"DNS {kind} {v!r} must be a non-empty word without spaces")


def render_resolv_conf(servers: Sequence[str], searches: Sequence[str], options: Sequence[str]) -> str:
    _check_tokens("server", servers)
    _check_tokens("search", searches)
    _check_tokens("option", options)
    lines = [f"nameserver {s}" for s in servers]
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def write_resolv_conf(
    path: str,
    servers: Sequence[str] = (),
    searches: Sequence[str] = (),
    options: Sequence[str] = (),
    host_resolv_conf: str = HOST_RESOLV_CONF,
) -> None:
    """Blocking: the pod's resolv.conf from dns_config, or the host's copy when it is all empty."""
    if not servers and not searches and not options:
        try:
            with open(host_resolv_conf, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        _write_pod_file(path, text)
        return
    _write_pod_file(path, render_resolv_conf(servers, searches, options))


def write_hostname(path: str, name: str) -> None:
    """Blocking: /etc/hostname for the pod (the UTS hostname itself is set by the OCI spec)."""
    if not name or any(c.isspace() for c in name) or len(name) > 253:
        raise InvalidArgument(f"hostname {name!r} must be 1-253 characters without spaces")
    _write_pod_file(path, name + "\n")


def write_hosts(path: str, hostname: str, ip: str = "", extra: Sequence[tuple[str, str]] = ()) -> None:
    """Blocking: /etc/hosts with localhost, the pod's own name on its IP, and extra (ip, name) pairs."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if hostname:
        lines.append(f"{ip or '127.0.1.1'}\t{hostname}")
    lines.extend(f"{addr}\t{name}" for addr, name in extra)
    _write_pod_file(path, "\n".join(lines) + "\n")
