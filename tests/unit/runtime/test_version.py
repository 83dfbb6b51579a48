from __future__ import annotations

import tomllib
from pathlib import Path

from crishim.runtime.version import __version__


def test_the_reported_version_is_pyprojects() -> None:
    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
    assert __version__ == tomllib.loads(pyproject.read_text())["project"]["version"]
