"""A minimal container rootfs made from the host's busybox, for oci/ tests."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.testimages import install_busybox

APPLETS = ("sh", "echo", "sleep", "cat", "id", "ls", "touch", "mount", "grep", "true", "false", "sysctl",
           "hostname", "ps", "head", "stat", "wc", "mkdir", "env")  # fmt: skip


def make_rootfs(root: Path) -> Path:
    """root/bin/busybox with its C library, applet symlinks, /etc/passwd and /etc/group; returns root."""
    install_busybox(root)
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    for d in ("etc", "proc", "sys", "dev", "tmp", "data"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n")
    return root
