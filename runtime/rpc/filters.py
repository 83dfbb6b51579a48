"""Filters shared by the List* and Stream* RPCs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

from crishim.cri_api import api_pb2
from crishim.runtime.state.records import Container, ContainerMeta, Sandbox

T = TypeVar("T")
R = TypeVar("R", Sandbox, Container)

# Stream* RPCs send lists in chunks small enough for any client's message limit.
STREAM_CHUNK = 500

ContainerSelector = api_pb2.ContainerFilter | api_pb2.ContainerStatsFilter
# Every CRI filter of pods or containers: each has an ID (or prefix) and a label selector.
Selector = api_pb2.PodSandboxFilter | api_pb2.PodSandboxStatsFilter | ContainerSelector


def id_matches(object_id: str, wanted: str) -> bool:
    """api.proto: the id filter matches a full ID or a unique prefix (crictl passes prefixes)."""
    return not wanted or object_id.startswith(wanted)


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def selects(f: Selector, object_id: str, labels: Mapping[str, str]) -> bool:
    """The ID and label part of a filter, which pod and container filters share."""
    return id_matches(object_id, f.id) and labels_match(labels, f.label_selector)


def selects_container(f: ContainerSelector, meta: ContainerMeta) -> bool:
    """The ID, pod and label part of a container filter (pod_sandbox_id may be a prefix too)."""
    return selects(f, meta.id, meta.labels) and id_matches(meta.sandbox_id, f.pod_sandbox_id)


def oldest_first(records: Iterable[R], keep: Callable[[R], bool]) -> list[R]:
    """The records `keep` accepts, in the order they were created (the order crictl shows)."""
    return sorted((r for r in records if keep(r)), key=lambda r: r.meta.created_at)


def chunks(items: Sequence[T] | Iterable[T], size: int = STREAM_CHUNK) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
