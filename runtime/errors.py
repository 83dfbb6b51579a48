"""Domain errors of runtime/ (sandboxes, containers, config, state).

Each class name matches a gRPC status code name. runtime/boundary.py maps the
error classes of every package to codes in one table, so oci/, images/ and
cgroups/ keep their own hierarchies without importing each other.
"""

from __future__ import annotations


class RuntimeError_(Exception):
    """Base of every error runtime/ raises on purpose."""


class NotFound(RuntimeError_):
    """The object named does not exist."""


class AlreadyExists(RuntimeError_):
    """A live object already uses that name."""


class InvalidArgument(RuntimeError_):
    """The request itself is wrong; the message names the field."""


class FailedPrecondition(RuntimeError_):
    """The object is not in a state that allows the call."""


class Unimplemented(RuntimeError_):
    """The call is not supported."""


class Unavailable(RuntimeError_):
    """A dependency (runtime binary, registry) cannot be reached now."""


class DeadlineExceeded(RuntimeError_):
    """The work did not finish in time."""


class PermissionDenied(RuntimeError_):
    """The caller may not do this."""


class ResourceExhausted(RuntimeError_):
    """A limit was hit."""


class Internal(RuntimeError_):
    """Something that should not fail did."""


class ConfigError(Exception):
    """A config file or flag is wrong; the message names the file and the key."""
