"""Exceptions raised by crishim.runtime.network.

runtime/boundary.py maps each class to a gRPC code in its error table; the
names mirror the codes. Messages say what the operator or caller can fix.
"""

from __future__ import annotations


class NetworkError(Exception):
    """Base of every error raised by the pod network code."""


class NotFound(NetworkError):
    """A network namespace, CNI plugin binary or cached result does not exist."""


class InvalidArgument(NetworkError):
    """A malformed value from the caller: a pod CIDR, a port mapping, a sandbox ID."""


class FailedPrecondition(NetworkError):
    """The node cannot do this now, e.g. no valid CNI network config is installed."""


class Unavailable(NetworkError):
    """A CNI plugin failed in a way that may succeed on retry (CNI error code 11)."""


class DeadlineExceeded(NetworkError):
    """A CNI plugin did not answer within the configured plugin timeout and was killed."""


class Internal(NetworkError):
    """A plugin printed something that is not CNI, or a kernel call failed unexpectedly."""


class PluginError(Internal):
    """A CNI plugin reported an error; carries the plugin's own code, msg and details.

    A subclass of Internal so the boundary maps it without knowing it; callers
    that want the plugin's words read `.plugin`, `.code`, `.msg`, `.details`.
    """

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        text = f"CNI plugin {plugin} failed on {command} (code {code}): {msg}"
        if details:
            text += f": {details}"
        super().__init__(text)
