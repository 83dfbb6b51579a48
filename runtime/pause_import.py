"""The built-in pause image, made and imported into the image store by a short-lived child.

Only a first start makes it, and that work (tar and gzip in memory, sha256 with OpenSSL's
libcrypto, the archive import) would otherwise stay in the daemon for its whole life as
heap it cannot hand back and libraries it keeps mapped: a few MiB of idle RSS. A child
process takes it all with it when it exits. The store is made for that: the daemon and
`crishim images import` may use one store at once (images/store.py, `_open_shared`).

Run as `python -m crishim.runtime.pause_import IMAGE_STORE_DIR`; on failure it prints
the reason on stderr and exits with status 1.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from crishim.runtime.errors import FailedPrecondition

# A dead child's last words are enough to say what went wrong; more would flood the log.
STDERR_TAIL_BYTES = 4096


async def import_pause_image(store_root: Path) -> None:
    """Builds the pause image from catatonit in a child process and imports it into the store
    at `store_root`; FailedPrecondition, naming the cause, when that fails."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crishim.runtime.pause_import",
        str(store_root),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await proc.communicate()
    except BaseException:  # cancelled start-up: the child must not outlive it
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        reason = err[-STDERR_TAIL_BYTES:].decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise FailedPrecondition(f"cannot make the built-in pause image: {reason}")


def _build_and_import(store_root: Path) -> None:
    from crishim.images.pause import build_pause_layout
    from crishim.images.store import ImageStore

    store = ImageStore(store_root, None)
    try:
        with tempfile.TemporaryDirectory(prefix="crishim-pause-") as tmp:
            layout = build_pause_layout(Path(tmp) / "layout")
            asyncio.run(store.import_archive(layout))
    finally:
        store.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m crishim.runtime.pause_import IMAGE_STORE_DIR", file=sys.stderr)
        return 2
    try:
        _build_and_import(Path(argv[1]))
    except Exception as exc:  # noqa: BLE001 - the parent reports it; a traceback says no more
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
