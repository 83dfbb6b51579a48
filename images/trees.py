"""Deleting unpacked trees (layers, the leftovers of a cancelled pull) without the GIL.

`shutil.rmtree` runs Python between every unlink: a 1 GiB layer of 16 Ki files is
tens of thousands of GIL hand-offs, each of which can keep the event loop, and so every
CRI call, waiting on a busy node. `rm -rf` in a child process does the same work and
holds no lock of ours; the calling thread only waits for it. It runs niced: deleting
is background work, and the CRI calls come first.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def delete_tree(path: Path) -> None:
    """Removes `path` and all below it (absent is fine); call it from a thread, never the loop.

    `--one-file-system` keeps rm out of anything mounted below (a layer never has mounts;
    this is the guard if one ever does). Whatever rm leaves, shutil gets a second go at.
    """
    try:
        subprocess.run(
            ["nice", "-n", "10", "rm", "-rf", "--one-file-system", "--", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    except OSError:
        pass
    if path.exists() or path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
