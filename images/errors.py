"""Exceptions raised by crishim.images.

runtime/boundary.py maps each class to a gRPC code in its error table; the
names mirror the codes. Messages say what the caller can do about the failure.
"""

from __future__ import annotations


class ImageError(Exception):
    """Base of every error raised by crishim.images."""


class NotFound(ImageError):
    """The image, manifest, blob or layer does not exist."""


class AlreadyExists(ImageError):
    """Something that must be unique already exists."""


class InvalidArgument(ImageError):
    """The caller passed a malformed reference, archive or setting."""


class FailedPrecondition(ImageError):
    """The store is in a state that forbids the operation (e.g. a pinned image)."""


class PermissionDenied(ImageError):
    """A registry refused our credentials (HTTP 401/403)."""


class Unavailable(ImageError):
    """A registry could not be reached or kept failing; retrying later may work."""


class DeadlineExceeded(ImageError):
    """A pull made no progress for too long and was cancelled."""


class Unimplemented(ImageError):
    """A format we deliberately do not support (Docker schema 1 manifests)."""


class Internal(ImageError):
    """A bug or an unexpected state of the store."""


class DataLoss(Internal):
    """Downloaded or stored content does not match its digest.

    A subclass of Internal so an error table that only knows the common
    codes still maps it; a table that knows DATA_LOSS can match it first.
    """


class UnpackAborted(ImageError):
    """The pull was cancelled while the layer was being unpacked."""


class LayerEscape(InvalidArgument):
    """A layer entry would be written outside the layer directory."""
