"""Filters shared by the List* and Stream* RPCs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")

# Stream* RPCs send lists in chunks small enough for any client's message limit.
STREAM_CHUNK = 500


def id_matches(object_id: str, wanted: str) -> bool:
    """api.proto: the id filter matches a full ID or a unique prefix (crictl passes prefixes)."""
    return not wanted or object_id.startswith(wanted)


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def chunks(items: Sequence[T] | Iterable[T], size: int = STREAM_CHUNK) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
