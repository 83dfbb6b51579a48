"""Names and versions the daemon reports."""

from __future__ import annotations

from importlib import metadata

RUNTIME_NAME = "crishim"
RUNTIME_API_VERSION = "v1"

try:
    __version__ = metadata.version("crishim")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
