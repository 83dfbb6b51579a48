"""On-disk cache of what CNI ADD ran and returned, keyed by network and sandbox.

DEL must get the same configuration, runtime config and `prevResult` that
ADD used (CNI spec, "Deleting"), even when the daemon restarted in between or
the config file changed: otherwise host-local never frees the pod's IP and
portmap leaves its iptables chains behind. The entry is written before ADD
runs (without a result) so a crash in the middle still leaves enough for DEL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from crishim.runtime.network.atomicfile import write_atomic
from crishim.runtime.network.errors import Internal

KIND = "crishimCniCacheV1"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    network: str
    container_id: str
    ifname: str
    netns: str
    cni_args: str
    config: dict[str, Any] = field(default_factory=dict)
    runtime_config: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "network": self.network,
            "containerId": self.container_id,
            "ifName": self.ifname,
            "netns": self.netns,
            "cniArgs": self.cni_args,
            "config": self.config,
            "runtimeConfig": self.runtime_config,
            "result": self.result,
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> CacheEntry:
        if doc.get("kind") != KIND:
            raise Internal(f"unknown CNI cache entry kind {doc.get('kind')!r}")
        return CacheEntry(
            network=str(doc["network"]),
            container_id=str(doc["containerId"]),
            ifname=str(doc["ifName"]),
            netns=str(doc.get("netns", "")),
            cni_args=str(doc.get("cniArgs", "")),
            config=dict(doc.get("config") or {}),
            runtime_config=dict(doc.get("runtimeConfig") or {}),
            result=doc.get("result"),
        )


def entry_path(cache_dir: str, network: str, container_id: str) -> str:
    return os.path.join(cache_dir, f"{network}-{container_id}.json")


def write_entry(cache_dir: str, entry: CacheEntry) -> None:
    """Blocking: write atomically (temp file, fsync, rename) so a crash never leaves half a file."""
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    final = entry_path(cache_dir, entry.network, entry.container_id)
    write_atomic(final, json.dumps(entry.to_json()), mode=0o600)


def find_entries(cache_dir: str, container_id: str) -> list[CacheEntry]:
    """Blocking: every cached entry for a sandbox, whatever network it was on."""
    suffix = f"-{container_id}.json"
    try:
        names = sorted(n for n in os.listdir(cache_dir) if n.endswith(suffix) and not n.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        try:
            with open(os.path.join(cache_dir, name), encoding="utf-8") as f:
                entry = CacheEntry.from_json(json.load(f))
        except (OSError, ValueError, KeyError, Internal):
            continue  # unreadable: DEL falls back to the current config
        if entry.container_id == container_id:
            out.append(entry)
    return out


def cached_ids(cache_dir: str) -> set[str]:
    """Blocking: the sandbox IDs that have an entry; read from the files, as network names hold '-'."""
    try:
        names = [n for n in os.listdir(cache_dir) if n.endswith(".json") and not n.startswith(".")]
    except FileNotFoundError:
        return set()
    out = set()
    for name in names:
        try:
            with open(os.path.join(cache_dir, name), encoding="utf-8") as f:
                out.add(CacheEntry.from_json(json.load(f)).container_id)
        except (OSError, ValueError, KeyError, Internal):
            continue
    return out


def remove_entry(cache_dir: str, network: str, container_id: str) -> None:
    try:
        os.unlink(entry_path(cache_dir, network, container_id))
    except FileNotFoundError:
        pass
