"""[nri]: containerd's defaults, and bad values refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.runtime.config import dump_config, load_config
from crishim.runtime.errors import ConfigError


def test_defaults_are_containerds(tmp_path: Path) -> None:
    nri = load_config(tmp_path / "absent.toml").nri
    assert nri.enable
    assert nri.socket_path == "/var/run/nri/nri.sock"
    assert (nri.plugin_path, nri.plugin_config_path) == ("/opt/nri/plugins", "/etc/nri/conf.d")
    assert (nri.plugin_registration_timeout, nri.plugin_request_timeout) == (5.0, 2.0)
    assert not nri.disable_connections


def test_the_table_is_read_and_dumped(tmp_path: Path) -> None:
    main = tmp_path / "crishim.toml"
    main.write_text('[nri]\nenable = false\nsocket_path = "/x/nri.sock"\nplugin_request_timeout = 3\n')
    config = load_config(main)
    assert (config.nri.enable, config.nri.socket_path, config.nri.plugin_request_timeout) == (False, "/x/nri.sock", 3.0)
    dumped = tmp_path / "dumped.toml"
    dumped.write_text(dump_config(config))
    assert load_config(dumped) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nri]\nplugin_request_timeout = 0\n", "nri.plugin_request_timeout must be above 0"),
        ('[nri]\nsocket_path = "nri.sock"\n', "nri.socket_path must be an absolute path"),
        ("[nri]\nenabled = true\n", "nri.enabled' is unknown"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    main = tmp_path / "crishim.toml"
    main.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(main)
