"""The built-in pause image, made on the node from Debian's catatonit.

Every pod needs an infra container holding its namespaces; making its image locally
means a node with no registry access can still run pods (see DESIGN.md, "sandbox").
catatonit started with -P only sleeps until it is signalled, which is all a pause
process does. Debian's catatonit is statically linked; should a build ever be
dynamic, its libraries and loader go into the layer too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FailedPrecondition

if TYPE_CHECKING:  # build.py (tar, gzip, hashlib) loads only where an image is made, not with PAUSE_IMAGE
    from .build import BuiltImage, FileEntry

CATATONIT = Path("/usr/bin/catatonit")
PAUSE_REPOSITORY = "localhost/crishim/pause"
PAUSE_ENTRYPOINT = ("/catatonit", "-P")


@lru_cache(maxsize=1)
def catatonit_version(binary: Path = CATATONIT) -> str:
    """catatonit's version ("tini version 0.1.7_catatonit" -> "0.1.7"); "unknown" when absent."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    match = re.search(r"(\d+(?:\.\d+)+)", out)
    return match.group(1) if match else "unknown"


PAUSE_IMAGE = f"{PAUSE_REPOSITORY}:{catatonit_version()}"


def is_static(binary: Path) -> bool:
    """True when the ELF file needs no dynamic loader (asked of `file`, else of ldd)."""
    if shutil.which("file"):
        out = subprocess.run(["file", "-L", str(binary)], capture_output=True, text=True, check=True).stdout
        if "statically linked" in out or "static-pie linked" in out:
            return True
        if "dynamically linked" in out:
            return False
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    return ldd.returncode != 0 or "not a dynamic executable" in (ldd.stdout + ldd.stderr)


def shared_libraries(binary: Path) -> list[Path]:
    """Host paths of the libraries and loader a dynamic binary needs (from ldd)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs: list[Path] = []
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def _with_parents(entries: list[FileEntry], path: str, seen: set[str]) -> None:
    from .build import directory

    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        parent = "/".join(parts[:i])
        if parent not in seen:
            seen.add(parent)
            entries.append(directory(parent))


def pause_layer(binary: Path = CATATONIT) -> list[FileEntry]:
    """/catatonit, its libraries when it is dynamic, and the mount points runc expects."""
    from .build import directory, host_file, regular

    if not binary.is_file():
        raise FailedPrecondition(f"{binary} is missing: install Debian's catatonit package")
    seen = {"dev", "etc", "proc", "sys"}
    entries: list[FileEntry] = [directory(d) for d in sorted(seen)]
    entries += [
        regular("etc/passwd", b"root:x:0:0:root:/:/catatonit\n"),
        regular("etc/group", b"root:x:0:\n"),
    ]
    entries.append(host_file("catatonit", binary, mode=0o755))
    if not is_static(binary):
        for lib in shared_libraries(binary):
            rel = str(lib).lstrip("/")
            _with_parents(entries, rel, seen)
            entries.append(host_file(rel, lib.resolve(), mode=0o755))
    return entries


def build_pause_image(binary: Path = CATATONIT) -> BuiltImage:
    from .build import ImageConfig, build_image

    config = ImageConfig(
        entrypoint=PAUSE_ENTRYPOINT,
        env=(),
        labels={"io.crishim.pause": "true", "io.crishim.catatonit.version": catatonit_version(binary)},
        stop_signal="SIGTERM",
    )
    return build_image([pause_layer(binary)], config)


def build_pause_layout(dest: Path) -> Path:
    """Write the pause image as an OCI layout at `dest`, named PAUSE_IMAGE; returns `dest`."""
    from .build import write_layout

    return write_layout(dest, {PAUSE_IMAGE: build_pause_image()})
