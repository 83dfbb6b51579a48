"""The committed NRI protobuf modules match their protos, and the wire names are NRI's."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.runtime.nri import generate, nri_pb2

pytest.importorskip("grpc_tools")


def test_committed_modules_match_the_protos(tmp_path: Path) -> None:
    generate.generate_into(tmp_path)
    for name in generate.GENERATED:
        committed = (generate.HERE / name).read_text()
        assert committed == (tmp_path / name).read_text(), f"{name} drifted: run python -m crishim.runtime.nri.generate"


def test_services_and_field_numbers_are_nris() -> None:
    assert nri_pb2.DESCRIPTOR.package == "nri.pkg.api.v1alpha1"
    plugin = nri_pb2.DESCRIPTOR.services_by_name["Plugin"]
    assert {"Configure", "Synchronize", "RunPodSandbox", "CreateContainer", "StopContainer"} <= {
        m.name for m in plugin.methods
    }
    runtime = nri_pb2.DESCRIPTOR.services_by_name["Runtime"]
    assert [m.name for m in runtime.methods] == ["RegisterPlugin", "UpdateContainers"]
    fields = nri_pb2.Container.DESCRIPTOR.fields_by_name
    assert (fields["pod_sandbox_id"].number, fields["exit_code"].number, fields["user"].number) == (2, 17, 21)
    assert nri_pb2.ConfigureResponse.DESCRIPTOR.fields_by_name["events"].number == 2
    assert nri_pb2.ContainerAdjustment.DESCRIPTOR.fields_by_name["linux"].number == 6
