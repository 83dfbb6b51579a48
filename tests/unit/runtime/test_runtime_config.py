"""Config precedence (defaults < file < drop-ins < flags) and every error message."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.runtime.config import dump_config, load_config
from crishim.runtime.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_when_no_file_exists(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.toml")
    assert config.socket == "/run/crishim/crishim.sock"
    assert config.default_runtime == ""  # chosen at start-up from the probed handlers
    assert set(config.runtimes) == {"runc", "crun"}
    assert config.image_store_path == Path("/var/lib/crishim/images")


def test_file_then_dropins_in_name_order_then_flags(tmp_path: Path) -> None:
    main = write(tmp_path / "crishim.toml", 'log_level = "warning"\nroot = "/a"\n[cni]\nconf_dir = "/main"\n')
    write(tmp_path / "crishim.d" / "20-b.toml", 'root = "/b"\n')
    write(tmp_path / "crishim.d" / "10-a.toml", 'root = "/ignored-by-20"\n[cni]\nconf_dir = "/dropin"\n')
    config = load_config(main, {"log_level": "debug"})
    assert config.root == "/b"  # 20-b.toml wins over 10-a.toml and the main file
    assert config.cni.conf_dir == "/dropin"
    assert config.log_level == "debug"  # flags last
    assert config.db_path == Path("/b/state.db")


def test_runtime_handler_tables_merge(tmp_path: Path) -> None:
    main = write(
        tmp_path / "c.toml", '[runtimes.kata]\npath = "/usr/bin/crun"\ntype = "crun"\n[runtimes.runc]\nroot = "/r"\n'
    )
    config = load_config(main)
    assert config.runtimes["kata"].type == "crun"
    assert config.runtimes["runc"].root == "/r"
    assert config.handler_root("runc") == Path("/r")
    assert config.handler_root("crun") == Path("/run/crishim/crun")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('sockett = "/x"\n', "key 'sockett' is unknown"),
        ("socket = 3\n", "key 'socket': expected a string"),
        ('[cni]\nbin_dirs = "/opt"\n', "key 'cni.bin_dirs': expected a list of strings"),
        ('[cni]\nplugin_timeout = "fast"\n', "key 'cni.plugin_timeout': expected a number"),
        ("[cni]\nnope = 1\n", "key 'cni.nope' is unknown"),
        ("cni = 1\n", "key 'cni': expected a table"),
        ('[runtimes.x]\ntype = "kata"\n', "runtimes.x.type must be 'runc' or 'crun'"),
        ("[runtimes.runc]\npath = 7\n", "key 'runtimes.runc.path': expected a string"),
        ('default_runtime = "youki"\n', "default_runtime 'youki' is not a configured handler"),
        ('log_level = "loud"\n', "log_level must be one of"),
        ('log_format = "xml"\n', "log_format must be one of"),
        ('cgroup_driver = "fancy"\n', "cgroup_driver must be"),
        ('root = "relative"\n', "root must be an absolute path"),
        ("log_size_max = true\n", "expected an integer"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "crishim.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    if "default_runtime" not in message:  # a cross-field check speaks of the effective config
        assert str(path) in str(info.value)


def test_dropin_error_names_the_dropin(tmp_path: Path) -> None:
    main = write(tmp_path / "crishim.toml", "")
    bad = write(tmp_path / "crishim.d" / "50-bad.toml", "typo = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(main)
    assert str(bad) in str(info.value)


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", require_file=True)


def test_dump_round_trips(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.toml", {"root": "/x", "cni": {"pod_cidr": "10.1.0.0/16"}})
    again = load_config(write(tmp_path / "dumped.toml", dump_config(config)))
    assert again == config
