"""The committed stubs match api.proto, and the proto carries the whole CRI surface."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.cri_api import api_pb2, generate

from tests.support.generated import without_version_stamps

pytest.importorskip("grpc_tools")

EXPECTED_RPCS = 43


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    generate.generate_into(tmp_path)
    for name in generate.GENERATED:
        committed = without_version_stamps((generate.HERE / name).read_text())
        fresh = without_version_stamps((tmp_path / name).read_text())
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


def test_only_the_generators_version_stamps_are_blanked() -> None:
    stub = "GRPC_GENERATED_VERSION = '1.85.1'\nclass RuntimeServiceStub(object):\n"
    assert without_version_stamps(stub) == without_version_stamps(stub.replace("1.85.1", "1.85.4"))
    assert without_version_stamps(stub) != without_version_stamps(stub.replace("RuntimeServiceStub", "Other"))
    module = "# Protobuf Python Version: 7.35.1\nx.ValidateProtobufRuntimeVersion(\n    7,\n    35,\n)\nY = 1\n"
    newer = module.replace("7.35.1", "7.36.2").replace("35,", "36,")
    assert without_version_stamps(module) == without_version_stamps(newer)
    assert without_version_stamps(module) != without_version_stamps(module.replace("Y = 1", "Y = 2"))
