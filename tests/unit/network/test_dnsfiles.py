from __future__ import annotations

from pathlib import Path

import pytest
from crishim.runtime.network.dnsfiles import write_hostname, write_hosts, write_resolv_conf
from crishim.runtime.network.errors import InvalidArgument


def test_resolv_conf_holds_what_the_pod_asked(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    write_resolv_conf(str(path), ["10.96.0.10"], ["default.svc.cluster.local", "svc.cluster.local"], ["ndots:5"])
    assert path.read_text() == (
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
    )


def test_empty_dns_config_copies_the_hosts_resolv_conf(tmp_path: Path) -> None:
    host = tmp_path / "host-resolv.conf"
    host.write_text("nameserver 192.0.2.53\n")
    path = tmp_path / "resolv.conf"
    write_resolv_conf(str(path), host_resolv_conf=str(host))
    assert path.read_text() == "nameserver 192.0.2.53\n"


def test_resolv_conf_rejects_values_with_spaces(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="search"):
        write_resolv_conf(str(tmp_path / "r"), ["1.1.1.1"], ["a b"], [])


def test_hostname_and_hosts_files(tmp_path: Path) -> None:
    write_hostname(str(tmp_path / "hostname"), "web-0")
    write_hosts(str(tmp_path / "hosts"), "web-0", "10.88.0.7")
    assert (tmp_path / "hostname").read_text() == "web-0\n"
    hosts = (tmp_path / "hosts").read_text().splitlines()
    assert "127.0.0.1\tlocalhost" in hosts
    assert "10.88.0.7\tweb-0" in hosts


def test_empty_hostname_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        write_hostname(str(tmp_path / "hostname"), "")
