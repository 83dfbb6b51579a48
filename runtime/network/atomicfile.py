"""Whole-file writes a crash cannot leave half done: CNI cache entries, the default conflist, pod DNS files.

The text goes to a hidden temp file (`.tmp-*.tmp`, which neither CNI nor our cache
listing reads) in the target's directory, then takes the final name with one rename.
"""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str, text: str, *, mode: int = 0o644, sync: bool = True) -> None:
    """Blocking: `path` holds either its old content or all of `text`, with permissions `mode`.

    `sync` flushes the data to disk before the rename, for files that must survive a
    power loss (the CNI cache); files rewritten at every pod start may skip it.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
