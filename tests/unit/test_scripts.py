"""Every script under scripts/ still starts: a benchmark whose imports rotted is found here,
not on the day somebody measures with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (REPO / "scripts").iterdir() if p.is_file() and p.suffix != ".py")
MODULES = sorted((REPO / "scripts").glob("*.py"))  # imported by the scripts, not run


def _is_python(script: Path) -> bool:
    return "python" in script.read_text().splitlines()[0]


@pytest.mark.parametrize("script", [s for s in SCRIPTS if _is_python(s)], ids=lambda s: s.name)
def test_python_script_answers_help(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


@pytest.mark.parametrize("script", [s for s in SCRIPTS if not _is_python(s)], ids=lambda s: s.name)
def test_shell_script_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_script_module_imports(module: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module.stem}"],
        cwd=module.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
