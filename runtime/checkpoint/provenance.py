"""Where a checkpoint was taken: the node's architecture, its CRIU and crishim, and whether this node can restore it.

CRIU's images hold a process's registers and memory as the dumping CPU and CRIU
wrote them: an archive from another architecture cannot run here, and CRIU does
not promise to read images written by a newer CRIU than itself. Rather than let
`runc restore` fail late with CRIU's log, the archive says where it came from
(config.dump's `crishim` object, which checkpointctl and the other engines
ignore) and the restore refuses up front with what to do. An archive without
that object (written by CRI-O or Podman) is not refused here: CRIU has the
last word on it.
"""

from __future__ import annotations

import asyncio
import platform
import re
import shutil
from dataclasses import dataclass
from typing import Any

from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.version import __version__

KEY = "crishim"
# The archive's layout version: a newer one may carry members this crishim would drop.
FORMAT = 1
# platform.machine() to the GOARCH names OCI images and the other engines use.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}  # fmt: skip
_VERSION = re.compile(r"Version:\s*(\d+(?:\.\d+)*)")


@dataclass(frozen=True, slots=True)
class Provenance:
    """What config.dump's `crishim` object records; an empty criu_version is unknown."""

    architecture: str
    criu_version: str
    crishim_version: str = __version__
    format: int = FORMAT

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "architecture": self.architecture,
            "criuVersion": self.criu_version,
            "version": self.crishim_version,
        }


def node_architecture() -> str:
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


_criu_versions: dict[str, str] = {}


async def criu_version(criu: str = "criu") -> str:
    """`criu --version`'s number, once per daemon; empty when CRIU is absent or says none."""
    known = _criu_versions.get(criu)
    if known is not None:
        return known
    found = shutil.which(criu)
    version = ""
    if found is not None:
        proc = await asyncio.create_subprocess_exec(
            found, "--version", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        match = _VERSION.search(out.decode(errors="replace"))
        version = match.group(1) if match else ""
    _criu_versions[criu] = version
    return version


async def this_node() -> Provenance:
    return Provenance(node_architecture(), await criu_version())


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def check_restorable(config: dict[str, Any], node: Provenance, archive: str) -> None:
    """FailedPrecondition, saying what to do, if the archive's provenance rules out a restore here."""
    recorded = config.get(KEY)
    if not isinstance(recorded, dict):
        return  # another engine's archive: nothing recorded to compare
    where = f"checkpoint {archive!r}"
    arch = recorded.get("architecture")
    if isinstance(arch, str) and arch and arch != node.architecture:
        raise FailedPrecondition(
            f"{where} was taken on an {arch} node and this node is {node.architecture}: "
            f"CRIU restores only on the architecture it dumped on; restore it on an {arch} node"
        )
    fmt = recorded.get("format")
    if isinstance(fmt, int) and fmt > FORMAT:
        raise FailedPrecondition(
            f"{where} is in checkpoint format {fmt}, written by crishim {recorded.get('version', '?')}; "
            f"this crishim {node.crishim_version} reads format {FORMAT} at most: upgrade crishim on this node"
        )
    taken_with = recorded.get("criuVersion")
    if isinstance(taken_with, str) and node.criu_version and _numbers(taken_with) > _numbers(node.criu_version):
        raise FailedPrecondition(
            f"{where} was dumped by CRIU {taken_with}, newer than this node's CRIU {node.criu_version}, "
            f"which may not read its images: upgrade criu on this node to {taken_with} or later"
        )
