"""Adjustments: merged in plugin order, conflicts refused naming both plugins, applied to the spec."""

from __future__ import annotations

from typing import Any

import pytest
from crishim.runtime.nri import nri_pb2
from crishim.runtime.nri.adjust import AdjustmentConflict, apply_to_spec, collect_adjustments


def reply(**adjust: Any) -> nri_pb2.CreateContainerResponse:
    return nri_pb2.CreateContainerResponse(adjust=nri_pb2.ContainerAdjustment(**adjust))


def spec() -> dict[str, Any]:
    return {
        "process": {
            "args": ["top"],
            "env": ["PATH=/bin", "OLD=1"],
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": []},
            {"destination": "/data", "type": "bind", "source": "/x", "options": ["rbind"]},
        ],
        "annotations": {"keep": "1", "drop": "2"},
        "linux": {"resources": {"memory": {"limit": 100}}},
    }


def test_every_kind_of_adjustment_reaches_the_spec() -> None:
    first = reply(
        annotations={"added": "yes", "-drop": ""},
        env=[nri_pb2.KeyValue(key="NEW", value="v"), nri_pb2.KeyValue(key="-OLD")],
        mounts=[nri_pb2.Mount(destination="/extra", type="bind", source="/srv", options=["ro", "rbind"])],
        rlimits=[nri_pb2.POSIXRlimit(type="RLIMIT_NOFILE", hard=4096, soft=2048)],
        hooks=nri_pb2.Hooks(poststart=[nri_pb2.Hook(path="/bin/true", args=["true"])]),
        CDI_devices=[nri_pb2.CDIDevice(name="vendor.com/gpu=0")],
    )
    linux = nri_pb2.LinuxContainerAdjustment(
        devices=[nri_pb2.LinuxDevice(path="/dev/fuse", type="c", major=10, minor=229)],
        resources=nri_pb2.LinuxResources(
            memory=nri_pb2.LinuxMemory(limit=nri_pb2.OptionalInt64(value=64 << 20)),
            cpu=nri_pb2.LinuxCPU(cpus="0", quota=nri_pb2.OptionalInt64(value=50000)),
            pids=nri_pb2.LinuxPids(limit=64),
            unified={"memory.high": "50000000"},
        ),
        oom_score_adj=nri_pb2.OptionalInt(value=500),
    )
    second = reply(mounts=[nri_pb2.Mount(destination="-/data")], linux=linux)
    merged = collect_adjustments([("00-a", first), ("10-b", second)])
    assert merged.cdi_devices == ["vendor.com/gpu=0"]
    adjusted = spec()
    apply_to_spec(adjusted, merged)
    assert adjusted["annotations"] == {"keep": "1", "added": "yes"}
    assert adjusted["process"]["env"] == ["PATH=/bin", "NEW=v"]
    assert [m["destination"] for m in adjusted["mounts"]] == ["/proc", "/extra"]
    assert adjusted["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 2048}]
    assert adjusted["hooks"]["poststart"] == [{"path": "/bin/true", "args": ["true"], "env": []}]
    assert adjusted["process"]["oomScoreAdj"] == 500
    resources = adjusted["linux"]["resources"]
    assert resources["memory"]["limit"] == 64 << 20
    assert resources["cpu"] == {"cpus": "0", "quota": 50000}
    assert resources["pids"] == {"limit": 64}
    assert resources["unified"] == {"memory.high": "50000000"}
    assert adjusted["linux"]["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    assert resources["devices"] == [{"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}]


@pytest.mark.parametrize(
    ("one", "two", "item"),
    [
        (
            {"env": [nri_pb2.KeyValue(key="A", value="1")]},
            {"env": [nri_pb2.KeyValue(key="-A")]},
            "environment variable 'A'",
        ),
        ({"annotations": {"k": "1"}}, {"annotations": {"k": "2"}}, "annotation 'k'"),
        (
            {"linux": nri_pb2.LinuxContainerAdjustment(oom_score_adj=nri_pb2.OptionalInt(value=1))},
            {"linux": nri_pb2.LinuxContainerAdjustment(oom_score_adj=nri_pb2.OptionalInt(value=2))},
            "OOM score",
        ),
    ],
)
def test_two_plugins_adjusting_one_item_conflict(one: dict[str, Any], two: dict[str, Any], item: str) -> None:
    with pytest.raises(AdjustmentConflict, match=f"00-a and 10-b both adjust {item}"):
        collect_adjustments([("00-a", reply(**one)), ("10-b", reply(**two))])


def test_no_adjustment_leaves_the_spec_alone() -> None:
    merged = collect_adjustments([("00-a", nri_pb2.CreateContainerResponse())])
    assert merged.empty
