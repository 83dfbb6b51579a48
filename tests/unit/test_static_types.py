"""The code type-checks under mypy --strict, as installed (crishim.runtime, crishim.oci, ...).

The test suites (tests/, conformance/) are checked in the same run, at the level
pyproject.toml's override for them sets.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    shutil.which("bash") is None or not (REPO / ".venv/bin/mypy").exists(),
    reason="needs the project's venv with mypy (scripts/setup installs it)",
)
def test_mypy_strict_finds_no_issues() -> None:
    result = subprocess.run([str(REPO / "scripts" / "typecheck")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
