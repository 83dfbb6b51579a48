"""One retry policy for every registry request: a bounded number of retries, exponential backoff.

The registry client retries a request that failed before any byte arrived, a small
blob whose stream broke, and the pull retries a layer whose stream broke; all three
count failures and wait the same way, so one knob (`retries`, `backoff`) tunes them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`retries` retries after the first attempt; the n-th retry waits `backoff * 2**(n-1)` seconds."""

    retries: int = 3
    backoff: float = 0.2

    def delay(self, failures: int) -> float | None:
        """The wait before the next attempt after `failures` failed attempts, or None: give up."""
        if failures > self.retries:
            return None
        return self.backoff * 2.0 ** (failures - 1)

    async def pause(self, failures: int) -> bool:
        """Waits before the next attempt and returns True, or returns False once the retries are used up."""
        delay = self.delay(failures)
        if delay is None:
            return False
        await asyncio.sleep(delay)
        return True
