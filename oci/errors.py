"""Exceptions raised by crishim.oci.

runtime/boundary.py maps each class to a gRPC code in its error table; the
names mirror the codes. Messages say what the caller can do about the failure;
errors from runc/crun/conmon carry the tool's own stderr, because that is
the only place the real reason (missing binary, bad mount...) is written.
"""

from __future__ import annotations


class OciError(Exception):
    """Base of every error raised by crishim.oci."""


class NotFound(OciError):
    """The container does not exist in the runtime's state directory."""


class AlreadyExists(OciError):
    """A container with that ID already exists in the runtime's state directory."""


class InvalidArgument(OciError):
    """The spec inputs are malformed or ask for something the handler cannot do."""


class FailedPrecondition(OciError):
    """The host or the container is in a state that forbids the operation."""


class PermissionDenied(OciError):
    """The host refused a privileged operation."""


class DeadlineExceeded(OciError):
    """An exec or a runtime command did not finish in time (it was killed)."""


class Unavailable(OciError):
    """The runtime binary or conmon is missing or not executable."""


class Internal(OciError):
    """The runtime or conmon failed in an unexpected way; the message has its stderr."""


class RuntimeCommandError(Internal):
    """A runc/crun invocation exited non-zero.

    Keeps the exit status and the raw stderr so callers can show the
    runtime's own reason (e.g. "exec: \\"nope\\": executable file not found").
    """

    def __init__(self, message: str, *, returncode: int, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
