"""One node-wide masquerade rule set for the default network, instead of one chain per pod.

The bridge plugin's `ipMasq` makes a chain per pod at ADD and removes it at DEL,
each a handful of iptables runs under the xtables lock: about 60 ms of every
RunPodSandbox and 80 ms of every StopPodSandbox on a plain node. The default
network's pods all share one range, so one chain per bridge does the same job
once: traffic from the range to the range stays as is, traffic leaving it
(multicast aside) is masqueraded. Only the built-in default network is served
this way; a conflist of anybody else keeps what its `ipMasq` says.

The chain is written with `iptables-restore --noflush`, one transaction that
replaces the chain's rules whole, so daemons sharing the bridge (tests, restarts)
converge on the same rules without a window without them. It stays when the daemon
exits: running pods keep their egress across a restart.
"""

from __future__ import annotations

import ipaddress
import subprocess

from crishim.runtime.network.errors import Internal

_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
_TOOLS = {4: ("iptables", "iptables-restore"), 6: ("ip6tables", "ip6tables-restore")}


def chain_name(bridge: str) -> str:
    """Per bridge, so two default networks on one node keep apart (iptables allows 28 chars)."""
    return f"CRISHIM-MASQ-{bridge}"[:28]


def restore_text(chain: str, cidrs: list[str]) -> str:
    """The nat table input for iptables-restore: the chain, declared (emptied) and refilled."""
    lines = ["*nat", f":{chain} - [0:0]"]
    for cidr in cidrs:
        family = ipaddress.ip_network(cidr).version
        lines.append(f"-A {chain} -s {cidr} -d {cidr} -j RETURN")
        lines.append(f"-A {chain} -s {cidr} ! -d {_MULTICAST[family]} -j MASQUERADE")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)


def ensure(bridge: str, cidrs: list[str]) -> None:
    """Blocking: the bridge's masquerade chain holds exactly `cidrs`' rules and POSTROUTING jumps to it."""
    chain = chain_name(bridge)
    for family in (4, 6):
        mine = [c for c in cidrs if ipaddress.ip_network(c).version == family]
        if not mine:
            continue
        tool, restore = _TOOLS[family]
        done = _run([restore, "-w", "--noflush"], restore_text(chain, mine))
        if done.returncode != 0:
            raise Internal(f"{restore} of the {chain} chain failed: {done.stderr.strip()}")
        jump = ["POSTROUTING", "-m", "comment", "--comment", "crishim pod masquerade", "-j", chain]
        if _run([tool, "-w", "-t", "nat", "-C", *jump]).returncode != 0:
            added = _run([tool, "-w", "-t", "nat", "-A", *jump])
            if added.returncode != 0:
                raise Internal(f"{tool}: cannot add the jump to {chain}: {added.stderr.strip()}")
