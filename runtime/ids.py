"""Object IDs and timestamps as CRI reports them."""

from __future__ import annotations

import os
import time


def new_id() -> str:
    """64 hex characters, like every CRI runtime's IDs (crictl shows the first 13)."""
    # secrets.token_hex(32) is exactly this; importing secrets would load hashlib and libcrypto.
    return os.urandom(32).hex()


def now_ns() -> int:
    return time.time_ns()
