"""Domain errors of runtime/ (sandboxes, containers, config, state).

Each class name matches a gRPC status code name: runtime/boundary.py maps any
package's errors to codes by class name, so oci/, images/ and cgroups/ keep
their own hierarchies without importing each other.
"""

from __future__ import annotations


class RuntimeError_(Exception):
    """Base of every error runtime/ raises on purpose."""


class NotFound(RuntimeError_):
    pass


class AlreadyExists(RuntimeError_):
    pass


class InvalidArgument(RuntimeError_):
    pass


class FailedPrecondition(RuntimeError_):
    pass


class Unimplemented(RuntimeError_):
    pass


class Unavailable(RuntimeError_):
    pass


class DeadlineExceeded(RuntimeError_):
    pass


class PermissionDenied(RuntimeError_):
    pass


class ResourceExhausted(RuntimeError_):
    pass


class Internal(RuntimeError_):
    pass


class ConfigError(Exception):
    """A config file or flag is wrong; the message names the file and the key."""
