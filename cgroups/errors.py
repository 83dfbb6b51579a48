"""Exceptions of crishim.cgroups.

runtime/boundary.py maps each class to a gRPC status code in its error table;
the names match the codes. Every message says what the caller should fix.
"""

from __future__ import annotations


class CgroupError(Exception):
    """Base of every error raised by crishim.cgroups."""


class NotFound(CgroupError):
    """The cgroup (or a controller file it needs) does not exist."""


class InvalidArgument(CgroupError):
    """A cgroup parent, path or resource value is malformed."""


class FailedPrecondition(CgroupError):
    """The host's cgroup setup cannot do what was asked (e.g. v2-only key on v1)."""


class Unavailable(CgroupError):
    """The cgroup is busy (processes still draining) and could not be removed in time."""


class PermissionDenied(CgroupError):
    """The kernel refused a write (not root, or a delegated hierarchy)."""


class Internal(CgroupError):
    """A cgroup file held content the kernel should never produce."""
