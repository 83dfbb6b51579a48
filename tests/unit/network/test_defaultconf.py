from __future__ import annotations

import json
from pathlib import Path

import pytest
from crishim.runtime.network.cniconf import load_conf_dir
from crishim.runtime.network.defaultconf import (
    DEFAULT_FILENAME,
    install_default_conflist,
    parse_pod_cidrs,
    render_default_conflist,
)
from crishim.runtime.network.errors import InvalidArgument

TEMPLATE = Path(__file__).resolve().parents[3] / "runtime" / "default-cni.conflist"


def test_shipped_template_matches_the_rendered_default() -> None:
    assert json.loads(TEMPLATE.read_text()) == render_default_conflist()


def test_installs_into_an_empty_dir_and_loads_as_a_valid_network(tmp_path: Path) -> None:
    path = install_default_conflist(str(tmp_path), "10.99.0.0/16")
    assert path == str(tmp_path / DEFAULT_FILENAME)
    conf = load_conf_dir(str(tmp_path)).config
    assert conf is not None
    assert conf.plugin_types == ("bridge", "portmap")
    assert conf.plugins[0]["ipam"]["ranges"] == [[{"subnet": "10.99.0.0/16"}]]
    assert conf.plugins[1]["capabilities"] == {"portMappings": True}


def test_never_overwrites_someone_elses_config(tmp_path: Path) -> None:
    (tmp_path / "05-flannel.conflist").write_text("{}")
    assert install_default_conflist(str(tmp_path), replace_own=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["05-flannel.conflist"]


def test_replace_own_rewrites_with_a_new_cidr(tmp_path: Path) -> None:
    install_default_conflist(str(tmp_path), "10.1.0.0/16")
    assert install_default_conflist(str(tmp_path), "10.2.0.0/16") is None
    install_default_conflist(str(tmp_path), "10.2.0.0/16", replace_own=True)
    doc = json.loads((tmp_path / DEFAULT_FILENAME).read_text())
    assert doc["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.2.0.0/16"}]]


def test_dual_stack_cidr_gets_a_range_and_route_per_family() -> None:
    doc = render_default_conflist("10.5.0.0/16, fd10::/64")
    ipam = doc["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.5.0.0/16"}], [{"subnet": "fd10::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]


@pytest.mark.parametrize("bad", ["", "10.0.0.0/33", "banana", "10.0.0.0/8,10.1.0.0/16"])
def test_bad_pod_cidr_is_invalid_argument(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_pod_cidrs(bad)
