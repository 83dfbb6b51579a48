"""CDI spec loading, device resolution and OCI spec edits, on spec files in temp dirs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from crishim.oci.cdi import apply_cdi_edits, names_from_annotations, parse_device_name, resolve_cdi_devices
from crishim.oci.cdi_spec import CdiEdits, load_spec_file
from crishim.oci.errors import InvalidArgument

NULL_MAJOR, NULL_MINOR = os.major(os.stat("/dev/null").st_rdev), os.minor(os.stat("/dev/null").st_rdev)


def write_json(directory: Path, name: str, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps(data))
    return path


def gpu_spec(version: str = "0.6.0", **extra: Any) -> dict[str, Any]:
    return {
        "cdiVersion": version,
        "kind": "example.com/gpu",
        "containerEdits": {
            "env": ["GPU_DRIVER=1"],
            "mounts": [{"hostPath": "/usr/lib/gpu", "containerPath": "/usr/lib/gpu", "options": ["ro", "bind"]}],
        },
        "devices": [
            {
                "name": "gpu0",
                "containerEdits": {
                    "env": ["GPU=0"],
                    "deviceNodes": [{"path": "/dev/gpu0", "hostPath": "/dev/null"}],
                },
            },
            {
                "name": "gpu1",
                "containerEdits": {
                    "env": ["GPU=1"],
                    "deviceNodes": [{"path": "/dev/gpu1", "type": "c", "major": 195, "minor": 1, "permissions": "rw"}],
                },
            },
        ],
        **extra,
    }


def base_spec() -> dict[str, Any]:
    return {
        "process": {"env": ["PATH=/bin", "GPU=old"], "user": {"uid": 0, "gid": 0}},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/usr/lib/gpu/sub", "type": "tmpfs", "source": "tmpfs"},
        ],
        "linux": {"devices": [], "resources": {"devices": [{"allow": False, "access": "rwm"}]}},
    }


def test_device_from_json_spec_gets_host_major_minor_and_spec_edits(tmp_path: Path) -> None:
    write_json(tmp_path / "etc", "gpu.json", gpu_spec())
    edits = resolve_cdi_devices(["example.com/gpu=gpu0"], [tmp_path / "etc"])
    assert edits.devices == ("example.com/gpu=gpu0",)
    assert edits.env == ("GPU_DRIVER=1", "GPU=0")
    (node,) = edits.device_nodes
    assert (node.path, node.host_path, node.type, node.major, node.minor) == (
        "/dev/gpu0",
        "/dev/null",
        "c",
        NULL_MAJOR,
        NULL_MINOR,
    )
    assert node.file_mode == 0o666


def test_spec_level_edits_are_applied_once_for_two_devices(tmp_path: Path) -> None:
    write_json(tmp_path, "gpu.json", gpu_spec())
    edits = resolve_cdi_devices(["example.com/gpu=gpu0", "example.com/gpu=gpu1", "example.com/gpu=gpu0"], [tmp_path])
    assert edits.env == ("GPU_DRIVER=1", "GPU=0", "GPU=1")
    assert len(edits.mounts) == 1
    assert [n.path for n in edits.device_nodes] == ["/dev/gpu0", "/dev/gpu1"]


def test_apply_edits_to_oci_spec(tmp_path: Path) -> None:
    write_json(tmp_path, "gpu.json", gpu_spec())
    spec = base_spec()
    apply_cdi_edits(spec, resolve_cdi_devices(["example.com/gpu=gpu0", "example.com/gpu=gpu1"], [tmp_path]))
    assert spec["process"]["env"] == ["PATH=/bin", "GPU=1", "GPU_DRIVER=1"]
    devices = {d["path"]: d for d in spec["linux"]["devices"]}
    assert devices["/dev/gpu0"] == {
        "path": "/dev/gpu0",
        "type": "c",
        "major": NULL_MAJOR,
        "minor": NULL_MINOR,
        "fileMode": 0o666,
    }
    assert devices["/dev/gpu1"]["major"] == 195
    rules = spec["linux"]["resources"]["devices"]
    assert {"allow": True, "type": "c", "major": NULL_MAJOR, "minor": NULL_MINOR, "access": "rwm"} in rules
    assert {"allow": True, "type": "c", "major": 195, "minor": 1, "access": "rw"} in rules
    assert rules[0] == {"allow": False, "access": "rwm"}  # the deny-all rule stays first
    # The CDI mount at /usr/lib/gpu must come before the mount below it.
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests.index("/usr/lib/gpu") < dests.index("/usr/lib/gpu/sub")
    assert {
        "destination": "/usr/lib/gpu",
        "source": "/usr/lib/gpu",
        "type": "bind",
        "options": ["ro", "bind"],
    } in spec["mounts"]


def test_yaml_spec_with_hooks_and_additional_gids(tmp_path: Path) -> None:
    hooks = "\n".join(
        f"    - hookName: {name}\n      path: /usr/bin/{name}-hook\n      args: [{name}-hook, x]\n      timeout: 5"
        for name in (
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        )
    )
    (tmp_path / "vendor.yaml").write_text(
        "cdiVersion: 0.7.0\nkind: vendor.com/net\ndevices:\n  - name: nic0\n    containerEdits:\n"
        "      env: [NIC=0]\n      additionalGids: [0, 44, 44, 1000]\n"
        f"containerEdits:\n  hooks:\n{hooks}\n"
    )
    spec = base_spec()
    spec["process"]["user"]["additionalGids"] = [1000]
    apply_cdi_edits(spec, resolve_cdi_devices(["vendor.com/net=nic0"], [tmp_path]))
    for name in ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"):
        assert spec["hooks"][name] == [{"path": f"/usr/bin/{name}-hook", "args": [f"{name}-hook", "x"], "timeout": 5}]
    assert spec["process"]["user"]["additionalGids"] == [1000, 44]
    assert "NIC=0" in spec["process"]["env"]


def test_unknown_device_names_it_and_the_dirs_searched(tmp_path: Path) -> None:
    write_json(tmp_path / "a", "gpu.json", gpu_spec())
    with pytest.raises(InvalidArgument) as err:
        resolve_cdi_devices(["example.com/gpu=gpu7"], [tmp_path / "a", tmp_path / "b"])
    msg = str(err.value)
    assert "example.com/gpu=gpu7" in msg
    assert str(tmp_path / "a") in msg
    assert str(tmp_path / "b") in msg
    assert "gpu0, gpu1" in msg


@pytest.mark.parametrize("name", ["gpu0", "example.com/gpu", "example.com=gpu0", "/gpu=0", "example.com/gpu=-x"])
def test_unqualified_or_malformed_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="CDI device"):
        resolve_cdi_devices([name], [])


def test_qualified_names_parse_including_mig_style() -> None:
    assert parse_device_name("nvidia.com/gpu=0:1") == ("nvidia.com", "gpu", "0:1")
    assert parse_device_name("example.com/test=all") == ("example.com", "test", "all")


def test_later_dir_overrides_earlier_one(tmp_path: Path) -> None:
    write_json(tmp_path / "etc", "gpu.json", gpu_spec())
    override = gpu_spec()
    override["devices"][0]["containerEdits"]["env"] = ["GPU=runtime"]
    write_json(tmp_path / "run", "gpu.json", override)
    edits = resolve_cdi_devices(["example.com/gpu=gpu0"], [tmp_path / "etc", tmp_path / "run"])
    assert "GPU=runtime" in edits.env


def test_same_device_twice_in_one_dir_is_a_conflict(tmp_path: Path) -> None:
    write_json(tmp_path, "a.json", gpu_spec())
    write_json(tmp_path, "b.json", gpu_spec())
    with pytest.raises(InvalidArgument, match="more than once"):
        resolve_cdi_devices(["example.com/gpu=gpu0"], [tmp_path])


def test_field_newer_than_declared_version_makes_the_file_unusable(tmp_path: Path) -> None:
    write_json(tmp_path, "gpu.json", gpu_spec(version="0.3.0"))  # uses hostPath (0.5.0)
    with pytest.raises(InvalidArgument, match=r"hostPath needs cdiVersion 0.5.0"):
        resolve_cdi_devices(["example.com/gpu=gpu0"], [tmp_path])


@pytest.mark.parametrize("version", ["0.2.0", "1.1.0", "banana"])
def test_unsupported_versions_are_refused(tmp_path: Path, version: str) -> None:
    path = write_json(tmp_path, "gpu.json", gpu_spec(version=version))
    with pytest.raises(InvalidArgument, match="not supported"):
        load_spec_file(path)


@pytest.mark.parametrize("version", ["0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0"])
def test_every_supported_version_from_hostpath_on_loads(tmp_path: Path, version: str) -> None:
    spec = load_spec_file(write_json(tmp_path, "gpu.json", gpu_spec(version=version)))
    assert sorted(spec.devices) == ["gpu0", "gpu1"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update(bogus=1), "unknown field"),
        (lambda s: s["devices"][0]["containerEdits"].update(env=["NOEQUALS"]), "NAME=VALUE"),
        (lambda s: s.update(containerEdits={"hooks": [{"hookName": "preboot", "path": "/x"}]}), "hookName"),
        (lambda s: s.update(containerEdits={"hooks": [{"hookName": "poststop", "path": "rel"}]}), "absolute"),
        (lambda s: s.update(devices=[]), "at least one device"),
        (lambda s: s.update(devices=[{"name": "empty"}]), "no containerEdits"),
        (lambda s: s.update(kind="nokind"), "vendor.com/class"),
    ],
)
def test_malformed_spec_is_refused_with_the_reason(tmp_path: Path, mutate: Any, message: str) -> None:
    data = gpu_spec()
    mutate(data)
    with pytest.raises(InvalidArgument, match=message):
        load_spec_file(write_json(tmp_path, "gpu.json", data))


def test_broken_file_reason_is_shown_when_its_device_is_asked_for(tmp_path: Path) -> None:
    (tmp_path / "gpu.yaml").write_text("cdiVersion: 0.6.0\nkind: example.com/gpu\ndevices: [unclosed\n")
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        resolve_cdi_devices(["example.com/gpu=gpu0"], [tmp_path])


def test_missing_host_node_is_an_error_unless_fully_described(tmp_path: Path) -> None:
    data = gpu_spec()
    data["devices"][0]["containerEdits"]["deviceNodes"] = [{"path": "/dev/does-not-exist-cdi"}]
    write_json(tmp_path, "gpu.json", data)
    with pytest.raises(InvalidArgument, match="does-not-exist-cdi"):
        resolve_cdi_devices(["example.com/gpu=gpu0"], [tmp_path])
    # gpu1 names no host node that exists but gives type and major: usable as is.
    edits = resolve_cdi_devices(["example.com/gpu=gpu1"], [tmp_path])
    assert edits.device_nodes[0].major == 195


def test_device_owner_follows_the_container_user_and_none_permissions_add_no_rule() -> None:
    from crishim.oci.cdi_spec import DeviceNode

    spec = base_spec()
    spec["process"]["user"] = {"uid": 1000, "gid": 1001}
    apply_cdi_edits(
        spec,
        CdiEdits(
            device_nodes=(
                DeviceNode(path="/dev/a", type="c", major=1, minor=3, permissions="none"),
                DeviceNode(path="/dev/b", type="c", major=1, minor=5, uid=0, gid=0),
            )
        ),
    )
    a, b = spec["linux"]["devices"]
    assert (a["uid"], a["gid"]) == (1000, 1001)
    assert (b["uid"], b["gid"]) == (0, 0)
    assert [r.get("minor") for r in spec["linux"]["resources"]["devices"]] == [None, 5]


def test_no_names_reads_nothing(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{")
    assert resolve_cdi_devices([], [tmp_path]) == CdiEdits()
    spec = base_spec()
    apply_cdi_edits(spec, CdiEdits())
    assert spec == base_spec()


def test_names_from_cdi_annotations() -> None:
    annotations = {
        "cdi.k8s.io/b": "vendor.com/x=2",
        "cdi.k8s.io/a": "vendor.com/x=0, vendor.com/x=1",
        "other/key": "vendor.com/x=9",
    }
    assert names_from_annotations(annotations) == ["vendor.com/x=0", "vendor.com/x=1", "vendor.com/x=2"]
