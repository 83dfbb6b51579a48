"""The request reading every List*, Stream* and by-ID RPC shares (runtime/rpc/filters.py, requests.py)."""

from __future__ import annotations

import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.runtime.errors import InvalidArgument
from crishim.runtime.rpc.filters import oldest_first, selects, selects_container
from crishim.runtime.rpc.requests import container_id, request_filter, sandbox_id
from crishim.runtime.state.records import Container, ContainerMeta, ContainerStatus, Record


def _container(cid: str, sandbox: str, created_at: int, labels: dict[str, str]) -> Container:
    meta = ContainerMeta(
        id=cid,
        sandbox_id=sandbox,
        name=cid,
        attempt=0,
        created_at=created_at,
        config=b"",
        image="busybox",
        image_id="sha256:1",
        image_ref="sha256:1",
        bundle="/b",
        rootfs="/r",
        runtime_handler="",
        labels=labels,
    )
    return Record(meta, ContainerStatus())


def test_an_absent_filter_is_none_and_an_empty_one_still_filters() -> None:
    assert request_filter(pb.ListContainersRequest()) is None
    empty = request_filter(pb.ListContainersRequest(filter=pb.ContainerFilter()))
    assert empty == pb.ContainerFilter()
    assert request_filter(pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(id="ab"))) == (
        pb.PodSandboxStatsFilter(id="ab")
    )


def test_ids_pods_and_labels_match_by_prefix_and_subset() -> None:
    c = _container("abc123", "pod987", 1, {"app": "web", "tier": "front"})
    assert selects(pb.PodSandboxFilter(id="abc", label_selector={"app": "web"}), c.meta.id, c.meta.labels)
    assert not selects(pb.PodSandboxFilter(label_selector={"app": "db"}), c.meta.id, c.meta.labels)
    assert selects_container(pb.ContainerStatsFilter(pod_sandbox_id="pod9"), c.meta)
    assert selects_container(pb.ContainerFilter(id="abc1", pod_sandbox_id="pod987"), c.meta)
    assert not selects_container(pb.ContainerFilter(pod_sandbox_id="pod1"), c.meta)
    assert not selects_container(pb.ContainerFilter(id="abd"), c.meta)


def test_listing_keeps_what_the_filter_accepts_oldest_first() -> None:
    records = [_container("c", "p", 30, {}), _container("a", "p", 10, {"x": "1"}), _container("b", "p", 20, {})]
    assert [r.meta.id for r in oldest_first(records, lambda r: True)] == ["a", "b", "c"]
    assert [r.meta.id for r in oldest_first(records, lambda r: not r.meta.labels)] == ["b", "c"]


def test_an_empty_id_is_refused_before_any_look_up() -> None:
    # No services are needed: the empty ID is refused before anything is resolved.
    with pytest.raises(InvalidArgument, match="container_id is empty"):
        container_id(None, "")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="pod_sandbox_id is empty"):
        sandbox_id(None, "", missing_ok=True)  # type: ignore[arg-type]
