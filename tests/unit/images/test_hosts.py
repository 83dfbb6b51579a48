from __future__ import annotations

from pathlib import Path

import pytest
from crishim.images.errors import InvalidArgument
from crishim.images.hosts import load_hosts


def test_docker_hub_is_served_by_registry_1() -> None:
    (host,) = load_hosts("docker.io", None)
    assert host.api_root == "https://registry-1.docker.io/v2"


@pytest.mark.parametrize("domain", ["localhost:5000", "127.0.0.1:5000", "[::1]:5000", "localhost"])
def test_loopback_registries_default_to_plain_http(domain: str) -> None:
    (host,) = load_hosts(domain, None)
    assert host.scheme == "http"


def test_other_registries_default_to_https(tmp_path: Path) -> None:
    (host,) = load_hosts("quay.io", tmp_path)
    assert host.api_root == "https://quay.io/v2"


def test_mirrors_are_tried_in_file_order_then_upstream(tmp_path: Path) -> None:
    conf = tmp_path / "docker.io"
    conf.mkdir()
    (conf / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n'
        '[host."http://10.0.0.1:5000"]\n  capabilities = ["pull", "resolve"]\n'
        '[host."https://mirror.example.com/prefix"]\n  capabilities = ["pull"]\n  skip_verify = true\n'
        '  ca = "ca.pem"\n'
        '[host."https://push-only.example.com"]\n  capabilities = ["push"]\n'
    )
    hosts = load_hosts("docker.io", tmp_path)
    assert [h.api_root for h in hosts] == [
        "http://10.0.0.1:5000/v2",
        "https://mirror.example.com/prefix/v2",
        "https://registry-1.docker.io/v2",
    ]
    assert hosts[1].skip_verify
    assert hosts[1].ca_files == (conf / "ca.pem",)
    assert [h.is_mirror for h in hosts] == [True, True, False]


def test_override_path_keeps_the_url_path(tmp_path: Path) -> None:
    conf = tmp_path / "example.com"
    conf.mkdir()
    (conf / "hosts.toml").write_text('[host."https://m.example.com/custom/api"]\n  override_path = true\n')
    assert load_hosts("example.com", tmp_path)[0].api_root == "https://m.example.com/custom/api"


def test_default_directory_applies_to_unlisted_hosts(tmp_path: Path) -> None:
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text('[host."http://mirror.local"]\n')
    assert load_hosts("any.example.com", tmp_path)[0].api_root == "http://mirror.local/v2"


def test_broken_hosts_toml_is_invalid_argument(tmp_path: Path) -> None:
    (tmp_path / "x.io").mkdir()
    (tmp_path / "x.io" / "hosts.toml").write_text("server = [")
    with pytest.raises(InvalidArgument, match="hosts.toml"):
        load_hosts("x.io", tmp_path)
