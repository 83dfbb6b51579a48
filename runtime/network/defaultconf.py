"""The embedded default network: a bridge with host-local IPAM and portmap.

Installed only into an empty CNI config dir, so a single node runs pods out of
the box while a cluster network's own conflist always wins. The loopback
plugin is left out on purpose: netns.create brings `lo` up itself, and the
bridge's per-pod `ipMasq` too: the daemon keeps one masquerade chain for the
whole range instead (masquerade.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

from crishim.runtime.network.atomicfile import write_atomic
from crishim.runtime.network.cniconf import candidate_files
from crishim.runtime.network.errors import InvalidArgument

DEFAULT_FILENAME = "10-crishim-bridge.conflist"
DEFAULT_NETWORK = "crishim"
DEFAULT_BRIDGE = "crishim0"
DEFAULT_POD_CIDR = "10.88.0.0/16"


def parse_pod_cidrs(pod_cidr: str) -> list[str]:
    """Split and check a pod CIDR; the kubelet sends "v4,v6" for dual stack."""
    out = []
    for part in (p.strip() for p in pod_cidr.split(",")):
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise InvalidArgument(f"pod CIDR {part!r} is not a valid IP network (e.g. 10.88.0.0/16)") from None
    if not out:
        raise InvalidArgument("the pod CIDR is empty")
    if len({ipaddress.ip_network(c).version for c in out}) != len(out):
        raise InvalidArgument(f"pod CIDR {pod_cidr!r} has two networks of the same IP family")
    return out


def render_default_conflist(
    pod_cidr: str = DEFAULT_POD_CIDR, *, network: str = DEFAULT_NETWORK, bridge: str = DEFAULT_BRIDGE
) -> dict[str, Any]:
    """The default conflist as a dict, one host-local range set and default route per family."""
    cidrs = parse_pod_cidrs(pod_cidr)
    ranges = [[{"subnet": c}] for c in cidrs]
    routes = [{"dst": "0.0.0.0/0" if ipaddress.ip_network(c).version == 4 else "::/0"} for c in cidrs]
    return {
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                # Masquerading is one node-wide chain (masquerade.py), not a chain per pod.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": ranges, "routes": routes},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def install_default_conflist(
    conf_dir: str,
    pod_cidr: str = DEFAULT_POD_CIDR,
    *,
    network: str = DEFAULT_NETWORK,
    bridge: str = DEFAULT_BRIDGE,
    filename: str = DEFAULT_FILENAME,
    replace_own: bool = False,
) -> str | None:
    """Blocking: write the default conflist when `conf_dir` has no config; return its path or None.

    With `replace_own`, a file of ours already there is rewritten (a new pod
    CIDR from UpdateRuntimeConfig); anybody else's config is never touched.
    """
    doc = render_default_conflist(pod_cidr, network=network, bridge=bridge)
    path = os.path.join(conf_dir, filename)
    existing = candidate_files(conf_dir)
    if existing and not (replace_own and existing == [filename]):
        return None
    os.makedirs(conf_dir, mode=0o755, exist_ok=True)
    write_atomic(path, json.dumps(doc, indent=2) + "\n")
    return path
