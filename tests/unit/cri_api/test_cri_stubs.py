"""The committed stubs match api.proto, and the proto carries the whole CRI surface."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.cri_api import api_pb2, generate

pytest.importorskip("grpc_tools")

EXPECTED_RPCS = 43


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    generate.generate_into(tmp_path)
    for name in generate.GENERATED:
        committed = (generate.HERE / name).read_text()
        fresh = (tmp_path / name).read_text()
        assert committed == fresh, f"{name} drifted from api.proto: run python -m crishim.cri_api.generate"


def test_proto_has_every_cri_rpc() -> None:
    runtime = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    images = api_pb2.DESCRIPTOR.services_by_name["ImageService"]
    assert len(runtime.methods) + len(images.methods) == EXPECTED_RPCS
    assert api_pb2.DESCRIPTOR.package == "runtime.v1"
    streaming = {m.name for m in runtime.methods if m.server_streaming} | {
        m.name for m in images.methods if m.server_streaming
    }
    assert streaming == {
        "StreamPodSandboxes",
        "StreamContainers",
        "StreamContainerStats",
        "StreamPodSandboxStats",
        "GetContainerEvents",
        "StreamPodSandboxMetrics",
        "StreamImages",
    }
