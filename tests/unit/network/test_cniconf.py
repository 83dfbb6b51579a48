from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from crishim.runtime.network.cniconf import config_from_raw, load_conf_dir, parse_config
from crishim.runtime.network.errors import InvalidArgument

BRIDGE = {"type": "bridge", "bridge": "br0", "ipam": {"type": "host-local"}}


def _write(d: Path, name: str, doc: object) -> None:
    (d / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))


def test_conflist_keeps_plugin_order_and_version() -> None:
    doc = {"cniVersion": "1.0.0", "name": "net", "plugins": [BRIDGE, {"type": "portmap"}]}
    conf = parse_config(json.dumps(doc), "10-net.conflist")
    assert conf.name == "net"
    assert conf.cni_version == "1.0.0"
    assert conf.plugin_types == ("bridge", "portmap")


def test_single_conf_becomes_a_one_plugin_list() -> None:
    doc = {"cniVersion": "0.4.0", "name": "single", **BRIDGE}
    conf = parse_config(json.dumps(doc), "10-single.conf")
    assert conf.plugin_types == ("bridge",)
    assert conf.raw["plugins"][0]["bridge"] == "br0"
    assert config_from_raw(conf.raw).plugin_types == ("bridge",)


def test_cni_versions_list_picks_highest_supported() -> None:
    doc = {"cniVersions": ["0.4.0", "1.1.0", "9.0.0"], "name": "n", "plugins": [BRIDGE]}
    assert parse_config(json.dumps(doc), "a.conflist").cni_version == "1.1.0"


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ("{not json", "not valid JSON"),
        ({"cniVersion": "1.0.0", "plugins": [BRIDGE]}, "no name"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "non-empty"),
        ({"cniVersion": "7.0.0", "name": "n", "plugins": [BRIDGE]}, "not supported"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../evil"}]}, "bare executable"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "x"}]}, "no type"),
    ],
)
def test_invalid_configs_are_rejected_with_a_reason(doc: object, reason: str) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(InvalidArgument, match=reason):
        parse_config(text, "x.conflist")


def test_first_valid_file_in_name_order_wins_and_invalid_ones_are_reported(tmp_path: Path) -> None:
    _write(tmp_path, "05-broken.conflist", "{")
    _write(tmp_path, "10-b.conflist", {"cniVersion": "1.0.0", "name": "b", "plugins": [BRIDGE]})
    _write(tmp_path, "20-a.conf", {"cniVersion": "1.0.0", "name": "a", **BRIDGE})
    _write(tmp_path, "00-ignored.txt", {"cniVersion": "1.0.0", "name": "z", **BRIDGE})
    outcome = load_conf_dir(str(tmp_path))
    assert outcome.config is not None
    assert outcome.config.name == "b"
    assert len(outcome.skipped) == 1
    assert "05-broken.conflist" in outcome.skipped[0]


def test_missing_or_empty_dir_has_no_config(tmp_path: Path) -> None:
    assert load_conf_dir(str(tmp_path / "absent")).config is None
    assert load_conf_dir(str(tmp_path)).config is None
    assert not os.listdir(tmp_path)
