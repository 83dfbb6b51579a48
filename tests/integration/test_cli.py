"""The `crishim` command as an operator uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import write_config

pytestmark = pytest.mark.root


def crishim(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = [sys.executable, "-m", "crishim.runtime.cli"] + (["--config", str(config)] if config else [])
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)


def test_version_prints_name_and_cri_version() -> None:
    out = crishim("version").stdout
    assert "runtime_name: crishim" in out
    assert "runtime_api_version: v1" in out


def test_config_prints_the_effective_toml(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = crishim("--log-level", "error", "config", config=config).stdout
    assert f'root = "{tmp_path}/root"' in out
    assert 'log_level = "error"' in out  # the flag wins over the file's "debug"


def test_global_options_work_after_the_command_as_the_readme_writes_them(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    after = crishim("config", "--config", str(config), "--log-level", "warning")
    assert after.returncode == 0, after.stderr
    assert f'root = "{tmp_path}/root"' in after.stdout
    assert 'log_level = "warning"' in after.stdout
    # Given on both sides, the option after the command wins.
    both = crishim("--log-level", "error", "config", "--log-level", "info", config=config)
    assert 'log_level = "info"' in both.stdout
    missing = crishim("serve", "--config", str(tmp_path / "absent.toml"))
    assert missing.returncode != 0
    assert "absent.toml: config file does not exist" in missing.stderr
    assert "No such option" not in missing.stderr


def test_config_error_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("sokcet = 1\n")
    result = crishim("config", config=bad)
    assert result.returncode != 0
    assert str(bad) in result.stderr
    assert "sokcet" in result.stderr


def test_doctor_checks_the_node() -> None:
    result = crishim("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (
        "runtime runc",
        "runtime crun",
        "conmon",
        "catatonit",
        "CNI plugins",
        "overlayfs",
        "cgroups",
        "PSI",
        "runtime features",
    ):
        assert f"] {name}:" in result.stdout


def test_pull_shows_progress_then_images_lists_it(tmp_path: Path, test_images) -> None:
    config = write_config(tmp_path)
    ref = test_images.ref("layers:latest")
    pulled = crishim("pull", ref, config=config)
    assert pulled.returncode == 0, pulled.stderr
    assert "done" in pulled.stdout
    assert f"pulled {ref} as sha256:" in pulled.stdout
    listed = crishim("images", config=config).stdout
    assert ref in listed


def test_images_import_loads_an_oci_layout(tmp_path: Path) -> None:
    from crishim.images import build as b

    from tests.support import testimages as tb

    image = b.build_image([b.build_layer([b.regular("hello", b"hi\n")])], b.ImageConfig(cmd=("/hello",)))
    archive = tb.write_layout_tar(tmp_path / "img.tar", {"example.com/offline/hello:1": image})
    (tmp_path / "node").mkdir()
    config = write_config(tmp_path / "node")
    result = crishim("images", "import", str(archive), config=config)
    assert result.returncode == 0, result.stderr
    assert "example.com/offline/hello:1" in crishim("images", config=config).stdout
