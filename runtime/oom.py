"""oom_score_adj as the kubelet asks for it, clamped to what this daemon may set."""

from __future__ import annotations

import logging

from crishim.oci.oom import clamp_oom_score_adj

log = logging.getLogger("crishim.oom")
_warned = False


def clamp_and_log(value: int) -> int:
    """Clamps once-logged: without CAP_SYS_RESOURCE a negative adjustment fails the pod in runc."""
    global _warned
    clamped = clamp_oom_score_adj(value)
    if clamped != value and not _warned:
        _warned = True
        log.warning(
            "oom_score_adj %d cannot be set without CAP_SYS_RESOURCE; using %d instead (logged once)",
            value,
            clamped,
        )
    return clamped
