"""Object IDs and timestamps as CRI reports them."""

from __future__ import annotations

import secrets
import time


def new_id() -> str:
    """64 hex characters, like every CRI runtime's IDs (crictl shows the first 13)."""
    return secrets.token_hex(32)


def now_ns() -> int:
    return time.time_ns()
