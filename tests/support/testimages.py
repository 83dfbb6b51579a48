"""Test images built from the host's busybox, and the builder helpers only tests use.

The product keeps what it needs to make its own pause image (crishim.images.build);
tests, the conformance suite and scripts/build-test-images build their images with
these on top of it.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from crishim.images.build import (
    EPOCH,
    Built,
    BuiltImage,
    Compression,
    FileEntry,
    ImageConfig,
    LayerBlob,
    Platform,
    build_image,
    build_layer,
    directory,
    hardlink,
    host_file,
    layout_files,
    regular,
)
from crishim.images.errors import InvalidArgument


def build_artifact(
    layers: Sequence[Sequence[FileEntry]],
    *,
    compression: Compression = "gzip",
    platform: Platform | None = None,
) -> BuiltImage:
    """An image that only carries data (for image volumes): no Env, no command, no history."""
    return build_image(layers, ImageConfig(env=()), compression=compression, platform=platform, history=False)


class ImageBuilder:
    """Step-by-step form of build_image, for callers that add layers as they go."""

    def __init__(
        self,
        *,
        compression: Compression = "gzip",
        docker: bool = False,
        platform: Platform | None = None,
    ) -> None:
        self._compression: Compression = compression
        self._docker = docker
        self._platform = platform or Platform()
        self._layers: list[LayerBlob] = []
        self._config = ImageConfig()

    def layer(self, entries: Iterable[FileEntry], *, compression: Compression | None = None) -> ImageBuilder:
        self._layers.append(build_layer(entries, compression or self._compression, docker=self._docker))
        return self

    def config(self, config: ImageConfig) -> ImageBuilder:
        self._config = config
        return self

    def build(self) -> BuiltImage:
        return build_image(self._layers, self._config, docker=self._docker, platform=self._platform)


def write_layout_tar(dest: Path, refs: Mapping[str, Built]) -> Path:
    """The same layout as one tar archive (what `docker save`-style importers take)."""
    files = layout_files(refs)
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"blobs", "blobs/sha256"})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for rel in sorted(files):
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(files[rel]), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(files[rel]))
    return dest


# --------------------------------------------------------------------------- busybox base

BUSYBOX = Path("/usr/bin/busybox")

# The same accounts as the busybox image critest expects, plus test users whose
# uid, name and group memberships tests assert on.
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
test-user:x:1001:1001:test user:/home/test-user:/bin/sh
nobody:x:65534:65534:nobody:/home:/bin/false
"""

GROUP = """\
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
mail:x:12:
www-data:x:33:
operator:x:37:
users:x:100:
test-user:x:1001:
test-group:x:1234:test-user
nogroup:x:65533:
nobody:x:65534:
"""


# Debian's busybox is built without pgrep, pkill and ipcs; tests (and critest) use them.
PROC_SCRIPTS = {
    "pgrep": """#!/bin/sh
# pgrep stand-in: prints the PIDs whose process name contains PATTERN.
pat="$1"; status=1
for d in /proc/[0-9]*; do
    name=$(cat "$d/comm" 2>/dev/null) || continue
    case "$name" in *$pat*) echo "${d#/proc/}"; status=0;; esac
done
exit $status
""",
    "ipcs": """#!/bin/sh
# ipcs stand-in: lists System V shared memory segments (ipcs -m) from /proc/sysvipc/shm.
echo
echo "------ Shared Memory Segments --------"
echo "key        shmid      owner      perms      bytes      nattch     status"
tail -n +2 /proc/sysvipc/shm 2>/dev/null | while read -r key shmid perms size cpid lpid nattch uid rest; do
    printf '%-10s %-10s %-10s %-10s %-10s %-10s\\n' "$key" "$shmid" "$uid" "$perms" "$size" "$nattch"
done
""",
    "pkill": """#!/bin/sh
# pkill stand-in: signals (default TERM) the processes whose name contains PATTERN.
sig=TERM
case "$1" in -*) sig="${1#-}"; shift;; esac
status=1
for pid in $(pgrep "$1"); do kill -"$sig" "$pid" 2>/dev/null && status=0; done
exit $status
""",
}


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    """The applet names the busybox binary provides (`busybox --list`)."""

    out = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True).stdout
    return sorted({name for name in out.split() if name and name != "busybox" and "/" not in name})


def shared_libraries(binary: Path) -> list[Path]:
    """The shared objects `binary` needs, its dynamic loader included, at the paths `ldd` names.

    Empty for a static binary. The paths are where the binary looks (the loader's is
    written into it), so an image lays each file at the same path.
    """
    found = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if found.returncode != 0:  # "not a dynamic executable"
        return []
    libraries = []
    for line in found.stdout.splitlines():
        words = line.split()
        path = words[2] if len(words) > 2 and words[1] == "=>" else words[0] if words else ""
        if path.startswith("/"):  # not the kernel's vdso, which has no file
            libraries.append(Path(path))
    return libraries


def busybox_libraries(busybox: Path = BUSYBOX) -> list[Path]:
    """The C library files Debian's dynamically linked busybox loads.

    The test images need that busybox, not busybox-static: its shell runs every command
    it does not build in by exec'ing it from PATH, as the upstream busybox image's does,
    so masking /bin/ls makes `sh -c ls` fail (critest's MaskedPaths). The static build
    runs applets inside the shell and never looks at /bin/ls.
    """
    if not busybox.is_file():
        raise InvalidArgument(f"{busybox} is missing: install Debian's busybox package (scripts/setup does)")
    libraries = shared_libraries(busybox)
    if not libraries:
        raise InvalidArgument(
            f"{busybox} is statically linked: install Debian's busybox package in place of busybox-static "
            "(scripts/setup does)"
        )
    return libraries


def _library_entries(libraries: Sequence[Path]) -> list[FileEntry]:
    """Each library at its own path, with the directories above it; the content of the file it resolves to."""
    dirs = sorted({str(parent) for lib in libraries for parent in lib.parents if str(parent) != "/"})
    return [
        *(directory(d) for d in dirs),
        *(host_file(str(lib), lib.resolve(), mode=0o755) for lib in libraries),
    ]


def install_busybox(root: Path, busybox: Path = BUSYBOX) -> None:
    """Copies busybox to root/bin/busybox and its libraries to their paths under root (bundle roots)."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    for lib in busybox_libraries(busybox):
        target = root / lib.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib.resolve(), target)
        target.chmod(0o755)


def busybox_rootfs_layer(busybox: Path = BUSYBOX) -> list[FileEntry]:
    """Entries of a minimal Linux root: busybox and its C library, its applets, accounts and the usual dirs."""
    libraries = busybox_libraries(busybox)
    applets = busybox_applets(busybox)
    entries = [
        directory("bin"),
        host_file("bin/busybox", busybox, mode=0o755),
        # Hard links, as upstream busybox images have: masking one applet's path
        # (critest's MaskedPaths masks /bin/ls) must not mask busybox itself.
        *(hardlink(f"bin/{name}", "bin/busybox") for name in applets),
        *(
            regular(f"bin/{name}", text.encode(), mode=0o755)
            for name, text in PROC_SCRIPTS.items()
            if name not in applets
        ),
        directory("dev"),
        *_library_entries(libraries),
        directory("etc"),
        regular("etc/passwd", PASSWD.encode()),
        regular("etc/group", GROUP.encode()),
        regular("etc/hosts"),
        regular("etc/resolv.conf"),
        directory("home"),
        directory("proc", mode=0o555),
        directory("root", mode=0o700),
        directory("sys", mode=0o555),
        directory("tmp", mode=0o1777),
        directory("usr"),
        directory("usr/bin"),
        directory("usr/sbin"),
        directory("var"),
        directory("var/run"),
        directory("var/www"),
    ]
    return entries
