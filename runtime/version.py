"""Names and versions the daemon reports.

The version is a constant kept equal to pyproject.toml's by a unit test, rather than read
through importlib.metadata at start-up: that import alone (email, csv, zipfile) costs the
idle daemon about a megabyte.
"""

from __future__ import annotations

RUNTIME_NAME = "crishim"
RUNTIME_API_VERSION = "v1"
__version__ = "0.1.0"
