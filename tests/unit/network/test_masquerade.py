from __future__ import annotations

from crishim.runtime.network.masquerade import chain_name, restore_text


def test_chain_name_fits_iptables_limit_and_names_the_bridge() -> None:
    assert chain_name("crishim0") == "CRISHIM-MASQ-crishim0"
    assert len(chain_name("a-very-long-bridge-name")) <= 28


def test_restore_text_declares_the_chain_and_masquerades_only_traffic_leaving_the_range() -> None:
    text = restore_text("C", ["10.88.0.0/16", "fd10::/64"])
    assert text.splitlines() == [
        "*nat",
        ":C - [0:0]",
        "-A C -s 10.88.0.0/16 -d 10.88.0.0/16 -j RETURN",
        "-A C -s 10.88.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE",
        "-A C -s fd10::/64 -d fd10::/64 -j RETURN",
        "-A C -s fd10::/64 ! -d ff00::/8 -j MASQUERADE",
        "COMMIT",
    ]
