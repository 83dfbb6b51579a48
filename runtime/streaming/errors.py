"""Errors raised by the streaming server and its backends.

Class names follow the project-wide convention; runtime/boundary.py maps each
class to a gRPC code in its error table.
"""

from __future__ import annotations


class StreamingError(Exception):
    """Base class of every streaming error."""


class NotFound(StreamingError):
    """A token, container or socket the request names does not exist."""


class InvalidArgument(StreamingError):
    """A request is malformed (bad port, empty command, no stream selected)."""


class Unavailable(StreamingError):
    """The target could not be reached (connection refused, container gone)."""


class Internal(StreamingError):
    """The runtime or a protocol peer misbehaved."""


class ProtocolError(Internal):
    """The peer sent bytes that do not follow SPDY or WebSocket framing."""
