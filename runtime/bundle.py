"""Reading back what a flow wrote into an object's bundle directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_runtime_spec(bundle: str | Path) -> dict[str, Any] | None:
    """The OCI spec the object was created with; None once its bundle is gone."""
    try:
        with open(Path(bundle) / "config.json", encoding="utf-8") as fh:
            spec: dict[str, Any] = json.load(fh)
    except (OSError, ValueError):
        return None
    return spec
