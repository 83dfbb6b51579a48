"""List answers joined from cached wire items equal the answers built message by message."""

from __future__ import annotations

import gc

from crishim.cri_api import api_pb2 as pb
from crishim.runtime.rpc.summaries import ListItems, Remembered
from crishim.runtime.state.records import SANDBOX_NOTREADY, Record, SandboxMeta, SandboxStatus


def record(i: int, label_bytes: int) -> Record[SandboxMeta, SandboxStatus]:
    meta = SandboxMeta(id=f"s{i}", name=f"pod{i}", namespace="ns", uid="u", attempt=i, created_at=i,
                       runtime_handler="runc", config=b"", bundle="/b", labels={"big": "x" * label_bytes})  # fmt: skip
    return Record(meta, SandboxStatus())


def summary(r: Record[SandboxMeta, SandboxStatus]) -> pb.PodSandbox:
    return pb.PodSandbox(id=r.meta.id, metadata=pb.PodSandboxMetadata(name=r.meta.name, attempt=r.meta.attempt),
                         labels=r.meta.labels, state=pb.SANDBOX_READY)  # fmt: skip


def test_joined_items_are_the_messages_themselves() -> None:
    built: list[str] = []

    def build(r: Record[SandboxMeta, SandboxStatus]) -> pb.PodSandbox:
        built.append(r.meta.id)
        return summary(r)

    items = ListItems(build)
    # Items of 1-, 2- and 3-byte lengths: the length prefix is a varint.
    records = [record(0, 10), record(1, 200), record(2, 20000), record(3, 0)]
    answer = items.response(pb.ListPodSandboxResponse, "items", records)
    assert answer == pb.ListPodSandboxResponse(items=[summary(r) for r in records])
    stream = items.response(pb.StreamPodSandboxesResponse, "pod_sandboxes", records[1:3])
    assert stream == pb.StreamPodSandboxesResponse(pod_sandboxes=[summary(r) for r in records[1:3]])
    assert built == ["s0", "s1", "s2", "s3"]  # each built once, then taken from the cache
    assert items.response(pb.ListPodSandboxResponse, "items", []) == pb.ListPodSandboxResponse()


def test_the_same_records_get_the_same_answer() -> None:
    items = ListItems(summary)
    records = [record(0, 1), record(1, 1)]
    first = items.response(pb.ListPodSandboxResponse, "items", records)
    assert items.response(pb.ListPodSandboxResponse, "items", list(records)) is first
    changed = [records[0], Record(records[1].meta, SandboxStatus(state="NOTREADY"))]  # a status change
    second = items.response(pb.ListPodSandboxResponse, "items", changed)
    assert second is not first
    assert [i.state for i in second.items] == [pb.SANDBOX_READY, pb.SANDBOX_READY]  # summary() ignores state
    assert items.response(pb.ListPodSandboxResponse, "items", changed[:1]) == pb.ListPodSandboxResponse(
        items=[summary(records[0])]
    )


def test_an_item_is_forgotten_with_its_record() -> None:
    items = ListItems(summary)
    r = record(0, 1)
    items.response(pb.ListPodSandboxResponse, "items", [r])
    items.response(pb.ListPodSandboxResponse, "items", [])  # the last answer no longer holds it
    assert len(items._wire) == 1
    del r
    gc.collect()
    assert len(items._wire) == 0


def test_remembered_status_is_built_once_per_record_and_follows_a_replaced_record() -> None:
    built: list[str] = []

    def build(r: Record[SandboxMeta, SandboxStatus]) -> pb.PodSandbox:
        built.append(r.meta.id)
        return summary(r)

    status = Remembered(build)
    first = record(0, 10)
    assert status(first) == summary(first)
    assert status(first) is status(first)
    # A status change replaces the record: the same ID, a new record, a new message.
    replaced = Record(first.meta, SandboxStatus(state=SANDBOX_NOTREADY))
    assert status(replaced) is not status(first)
    assert built == ["s0", "s0"]
    del first, replaced
    gc.collect()
    assert len(status._built) == 0  # forgotten with their records
