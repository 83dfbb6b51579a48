"""Which os/architecture/variant this machine runs, and matching index entries against it."""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass
from typing import Any

_MACHINE_TO_OCI: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "mips64": ("mips64", ""),
}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> Platform:
    """The platform images must be built for to run here."""
    machine = _platform.machine().lower()
    arch, variant = _MACHINE_TO_OCI.get(machine, (machine, ""))
    return Platform(os="linux", architecture=arch, variant=variant)


def _variant_rank(wanted: Platform, variant: str) -> int | None:
    """Lower is better; None means the entry cannot run here."""
    if variant == wanted.variant:
        return 0
    if wanted.architecture == "arm64" and {variant, wanted.variant} <= {"", "v8"}:
        return 0
    if not variant:
        return 1
    if wanted.architecture == "arm" and variant.startswith("v") and wanted.variant.startswith("v"):
        try:
            if int(variant[1:]) <= int(wanted.variant[1:]):
                return 10 - int(variant[1:]) + 1
        except ValueError:
            return None
    return None


def pick_manifest(entries: list[dict[str, Any]], wanted: Platform) -> dict[str, Any] | None:
    """The index entry that best fits `wanted`, or None; attestation entries (unknown/unknown) never fit."""
    best: tuple[int, int] | None = None
    chosen: dict[str, Any] | None = None
    for position, entry in enumerate(entries):
        plat = entry.get("platform") or {}
        if plat.get("os") != wanted.os or plat.get("architecture") != wanted.architecture:
            continue
        rank = _variant_rank(wanted, str(plat.get("variant", "")))
        if rank is None:
            continue
        key = (rank, position)
        if best is None or key < best:
            best, chosen = key, entry
    return chosen
