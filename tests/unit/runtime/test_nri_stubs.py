"""The committed NRI protobuf modules match their protos, and the wire names are NRI's."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.runtime.nri import generate, nri_pb2

from tests.support.generated import without_version_stamps

pytest.importorskip("grpc_tools")


def test_committed_modules_match_the_protos(tmp_path: Path) -> None:
    generate.generate_into(tmp_path)
    for name in generate.GENERATED:
        committed = without_version_stamps((generate.HERE / name).read_text())
        fresh = without_version_stamps((tmp_path / name).read_text())
        assert committed == fresh, f"{name} drifted: run python -m crishim.runtime.nri.generate"


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


def test_linux_adjustment_fields_are_nris() -> None:
    numbers = {f.name: f.number for f in nri_pb2.LinuxContainerAdjustment.DESCRIPTOR.fields}
    assert numbers == {
        "devices": 1,
        "resources": 2,
        "cgroups_path": 3,
        "oom_score_adj": 4,
        "io_priority": 5,
        "seccomp_policy": 6,
        "namespaces": 7,
        "sysctl": 8,
        "net_devices": 9,
        "scheduler": 10,
        "rdt": 11,
        "memory_policy": 12,
    }
    container = {f.name: f.number for f in nri_pb2.LinuxContainer.DESCRIPTOR.fields}
    assert (container["io_priority"], container["seccomp_policy"], container["rdt"]) == (6, 8, 12)
    assert nri_pb2.IOPrioClass.Value("IOPRIO_CLASS_IDLE") == 3
    assert nri_pb2.LinuxSchedulerPolicy.Value("SCHED_DEADLINE") == 7
    assert nri_pb2.MpolMode.Value("MPOL_WEIGHTED_INTERLEAVE") == 6
    assert nri_pb2.LinuxRdt.DESCRIPTOR.fields_by_name["remove"].number == 4
