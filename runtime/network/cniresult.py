"""Reading CNI results (0.1.0 through 1.1.0) into what PodSandboxStatus needs.

CRI wants one primary IP and a list of additional ones (dual stack,
api.proto PodSandboxNetworkStatus); the kubelet takes the first as the pod
IP, so IPv4 goes first when the pod has both families.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from crishim.runtime.network.errors import Internal


@dataclass(frozen=True, slots=True)
class Interface:
    """An interface a plugin reported; `sandbox` is the netns path for pod-side ones."""

    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass(frozen=True, slots=True)
class NetworkSetup:
    """What a pod got from CNI ADD: its primary IP, the others, interfaces and the raw result."""

    ip: str
    additional_ips: tuple[str, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    gateways: tuple[str, ...] = ()
    result: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def all_ips(self) -> tuple[str, ...]:
        return ((self.ip,) if self.ip else ()) + self.additional_ips


def _bare_ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise Internal(f"CNI result holds a non-string address {value!r}")
    try:
        return ipaddress.ip_interface(value).ip
    except ValueError:
        raise Internal(f"CNI result holds a malformed address {value!r}") from None


def parse_result(result: dict[str, Any]) -> NetworkSetup:
    """Turn the final plugin's result into a NetworkSetup; Internal if it is malformed."""
    if not isinstance(result, dict):
        raise Internal("CNI result is not a JSON object")
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    gateways: list[str] = []
    entries: list[dict[str, Any]] = []
    if isinstance(result.get("ips"), list):  # 0.3.0 and later
        entries = [e for e in result["ips"] if isinstance(e, dict)]
    else:  # 0.1.0 / 0.2.0: one address per family
        for key in ("ip4", "ip6"):
            entry = result.get(key)
            if isinstance(entry, dict) and "ip" in entry:
                entries.append({"address": entry["ip"], "gateway": entry.get("gateway")})
    for entry in entries:
        addr = _bare_ip(entry.get("address"))
        if addr not in ips:
            ips.append(addr)
        gw = entry.get("gateway")
        if isinstance(gw, str) and gw:
            gateways.append(gw)
    ordered = [a for a in ips if a.version == 4] + [a for a in ips if a.version == 6]
    interfaces = tuple(
        Interface(name=str(i.get("name", "")), mac=str(i.get("mac", "")), sandbox=str(i.get("sandbox", "")))
        for i in result.get("interfaces", []) or []
        if isinstance(i, dict)
    )
    return NetworkSetup(
        ip=str(ordered[0]) if ordered else "",
        additional_ips=tuple(str(a) for a in ordered[1:]),
        interfaces=interfaces,
        gateways=tuple(gateways),
        result=result,
    )
