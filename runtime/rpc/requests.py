"""What the RPCs read from their requests alike: a required ID, resolved, and the optional filter.

One place says that an empty ID is INVALID_ARGUMENT before any look-up, and
that an absent filter (not an empty one) means "everything", so every RPC
that takes an ID or a filter answers the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

from crishim.runtime.errors import InvalidArgument

if TYPE_CHECKING:
    from crishim.runtime.services import Services

F_co = TypeVar("F_co", covariant=True)


class Filtered(Protocol[F_co]):
    """A List* or Stream* request: its `filter` field is a message that may be unset."""

    @property
    def filter(self) -> F_co: ...

    def HasField(self, field_name: str) -> bool: ...


def request_filter(request: Filtered[F_co]) -> F_co | None:
    """The request's filter; None when the caller set none (an empty filter still filters)."""
    return request.filter if request.HasField("filter") else None


def container_id(svc: Services, wanted: str, *, missing_ok: bool = False) -> str:
    """The full ID of the container `wanted` names (a full ID or a unique prefix)."""
    if not wanted:
        raise InvalidArgument("container_id is empty")
    return svc.resolve_container_id(wanted, missing_ok=missing_ok)


def sandbox_id(svc: Services, wanted: str, *, missing_ok: bool = False) -> str:
    """The full ID of the pod sandbox `wanted` names (a full ID or a unique prefix)."""
    if not wanted:
        raise InvalidArgument("pod_sandbox_id is empty")
    return svc.resolve_sandbox_id(wanted, missing_ok=missing_ok)
