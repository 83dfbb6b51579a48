"""oom_score_adj clamping.

Lowering oom_score_adj below the current value needs CAP_SYS_RESOURCE. The
kubelet asks -998 for sandboxes; on hosts where no process holds that
capability runc would fail the whole pod, so we clamp to the lowest value
this process may set and let runtime/ log the clamping once.
"""

from __future__ import annotations

from pathlib import Path

from .capabilities import read_status_caps

OOM_MIN, OOM_MAX = -1000, 1000


def lowest_settable(
    oom_path: Path = Path("/proc/self/oom_score_adj"), status_path: Path = Path("/proc/self/status")
) -> int:
    """The lowest oom_score_adj a child of this process can be given."""
    if "CAP_SYS_RESOURCE" in read_status_caps("CapEff", status_path):
        return OOM_MIN
    return int(oom_path.read_text().strip())


def clamp_oom_score_adj(value: int, floor: int | None = None) -> int:
    """`value` bounded to [floor, 1000]; floor defaults to lowest_settable()."""
    low = lowest_settable() if floor is None else floor
    return max(low, min(OOM_MAX, max(OOM_MIN, value)))


def oom_score_adj_clamped(value: int, floor: int | None = None) -> bool:
    """Whether clamp_oom_score_adj changes `value` (runtime/ logs that once)."""
    return clamp_oom_score_adj(value, floor) != value
