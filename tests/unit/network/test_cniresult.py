from __future__ import annotations

import pytest
from crishim.runtime.network.cniresult import parse_result
from crishim.runtime.network.errors import Internal


def test_ipv4_is_primary_even_when_listed_after_ipv6() -> None:
    result = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
        "ips": [
            {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 0},
            {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0},
        ],
    }
    setup = parse_result(result)
    assert setup.ip == "10.1.0.5"
    assert setup.additional_ips == ("fd00::5",)
    assert setup.interfaces[0].sandbox == "/run/netns/x"
    assert setup.gateways == ("fd00::1", "10.1.0.1")


def test_040_result_with_version_fields_parses() -> None:
    result = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.2.0.9/16"}]}
    assert parse_result(result).all_ips == ("10.2.0.9",)


def test_020_result_uses_ip4_and_ip6_keys() -> None:
    result = {"cniVersion": "0.2.0", "ip4": {"ip": "10.3.0.2/16"}, "ip6": {"ip": "fd01::2/64"}}
    setup = parse_result(result)
    assert (setup.ip, setup.additional_ips) == ("10.3.0.2", ("fd01::2",))


def test_result_without_ips_gives_empty_primary() -> None:
    assert parse_result({"cniVersion": "1.0.0"}).ip == ""


def test_malformed_address_is_internal() -> None:
    with pytest.raises(Internal, match="malformed"):
        parse_result({"ips": [{"address": "not-an-ip"}]})
