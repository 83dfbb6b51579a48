"""Name reservation: a pod or container name is taken before any work is done for it.

RunPodSandbox and CreateContainer reserve their name key first. A second call
for a name that is being created, or that a live record holds, is refused with
ALREADY_EXISTS at once, so no netns, rootfs, conmon or runc container is made
for a request that could never be recorded. A reservation lasts while its
create runs: on success the record in the store holds the name from then on,
on failure the name is free again. The store's unique name key stays the
durable guard (and the one that survives a daemon restart).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from crishim.runtime.errors import AlreadyExists


class NameRegistry:
    """Name keys being created right now, each with the ID it is created under."""

    def __init__(self) -> None:
        self._creating: dict[str, str] = {}

    @contextmanager
    def reserved(self, key: str, object_id: str, what: str, recorded_as: Callable[[], str | None]) -> Iterator[None]:
        """Holds `key` for `object_id` for the duration of the block.

        `what` names the object in the refusal ("container 'app' attempt 0 in
        sandbox ..."); `recorded_as` looks the key up in the store: the ID of the
        live record holding it, or None. Check and reservation happen without an
        await in between, so two concurrent calls cannot both pass.
        """
        holder = self._creating.get(key)
        if holder is not None:
            raise AlreadyExists(
                f"{what} is being created as {holder}; wait for that call to finish, or use another attempt number"
            )
        holder = recorded_as()
        if holder is not None:
            raise AlreadyExists(f"{what} already exists as {holder}; remove it first or use another attempt number")
        self._creating[key] = object_id
        try:
            yield
        finally:
            del self._creating[key]
