"""CRIU's network lock, skipped: a pod's network is crishim's, and a killed CRIU must not cut it.

While CRIU dumps or restores a process tree inside a network namespace, it "locks" that
namespace: it loads a DROP-everything chain (`CRIU`, jumped to from INPUT and OUTPUT, for
IPv4 and IPv6) with iptables-restore and ip6tables-restore, and loads its removal the same
way when it is done. The lock keeps TCP peers quiet while established connections are
dumped with `--tcp-established`, which crishim never asks for (CRIU then refuses a
container holding an established connection). For crishim the lock is only cost and risk:

- four program starts per checkpoint and per restore (lock and unlock, each family),
  a third of a second of each on a slow node;
- a CRIU killed mid-dump (a call's timeout, the daemon killed) never unlocks: the pod
  then drops every packet until someone deletes the chain by hand.

CRIU 3.18 and later can be told `--network-lock skip` for a runtime that manages the
network itself; Debian 12's CRIU 3.17 knows only iptables and an nftables lock that
crashes it, and runc passes neither through. So the CRIU that runc starts finds, first on
its PATH, an iptables-restore and an ip6tables-restore that load nothing and succeed.
CRIU writes its rules into a pipe and closes it before it starts the command, so a command
that never reads them is safe. CRIU needs the real commands only for a namespace it
restores itself, with its own rules; a pod's namespace is always external to it (runc
names it by path), and a host-network container's is the host's, which CRIU neither dumps
nor restores.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# What CRIU runs to lock and to unlock a network namespace.
LOCK_COMMANDS = ("iptables-restore", "ip6tables-restore")
# The directory, in a checkpoint's work directory or a restored container's bundle, holding them.
SHIM_DIRECTORY = "criu-bin"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def path_without_lock(directory: Path, inherited: str | None = None) -> str:
    """Blocking: fills `directory` with LOCK_COMMANDS that do nothing (links to `true`) and
    returns a PATH with it first, then `inherited` (the daemon's own PATH by default)."""
    true = shutil.which("true") or "/bin/true"
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in LOCK_COMMANDS:
        link = directory / name
        if os.path.islink(link) and os.readlink(link) == true:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(true)
    rest = os.environ.get("PATH", _DEFAULT_PATH) if inherited is None else inherited
    return f"{directory}:{rest}" if rest else str(directory)
