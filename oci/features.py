"""What an OCI runtime handler can do, as probed at start-up (see runtime.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuntimeFeatures:
    """Capabilities of one runtime handler; Status advertises them per handler."""

    recursive_read_only: bool = False
    idmap_mounts: bool = False
    user_namespaces: bool = True
