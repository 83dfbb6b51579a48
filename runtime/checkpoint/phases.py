"""Where a checkpoint's or a restore's time went, for the one log line that says so.

A checkpoint or restore is several slow steps (freezing, CRIU, the archive, conmon);
when one takes longer than it should, the log says which, without a profiler.
scripts/bench-checkpoint prints these lines beside its own figures.
"""

from __future__ import annotations

import time

# The log lines scripts/bench-checkpoint collects start with this.
LOG_PREFIX = "phases of"


class Phases:
    """Seconds per named step, each measured from the end of the one before."""

    def __init__(self) -> None:
        self._started = self._last = time.perf_counter()
        self._spans: list[tuple[str, float]] = []

    def mark(self, step: str) -> None:
        """`step` ended now."""
        now = time.perf_counter()
        self._spans.append((step, now - self._last))
        self._last = now

    def summary(self) -> str:
        """'pause 0.05, runc checkpoint 1.80, ..., total 3.10' (seconds)."""
        steps = [f"{step} {seconds:.2f}" for step, seconds in self._spans]
        return ", ".join([*steps, f"total {self._last - self._started:.2f}"])
