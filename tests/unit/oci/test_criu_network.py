"""CRIU's network lock skipped: the PATH runc's CRIU gets loads nothing into the pod's namespace.

Each check runs CRIU's own lock, as CRIU runs it (iptables-restore -w --noflush, the rules on
standard input), in a network namespace of its own (unshare -n), and reads back what the
namespace holds with the real iptables-save.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from crishim.oci.criu_network import LOCK_COMMANDS, path_without_lock

# CRIU 3.17's lock, as it hands it to iptables-restore and ip6tables-restore.
CRIU_LOCK = (
    "*filter\n:CRIU - [0:0]\n-I INPUT -j CRIU\n-I OUTPUT -j CRIU\n"
    "-A CRIU -m mark --mark 0xC114 -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n"
)

needs_iptables = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(c) for c in ("unshare", "iptables-restore", "iptables-save")),
    reason="needs root, unshare and iptables",
)


def _lock_then_save(path: str, family: str = "") -> subprocess.CompletedProcess[str]:
    """In a new network namespace: CRIU's lock through `path`, then the namespace's rules (real iptables-save)."""
    save = shutil.which(f"ip{family}tables-save")
    script = f'printf "%s" "$LOCK" | ip{family}tables-restore -w --noflush && echo locked && "{save}"'
    env = {"PATH": path, "LOCK": CRIU_LOCK}
    return subprocess.run(["unshare", "-n", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)


@needs_iptables
def test_criu_lock_loads_nothing_through_the_path(tmp_path: Path) -> None:
    done = _lock_then_save(path_without_lock(tmp_path / "bin"))
    assert done.returncode == 0, done.stderr
    assert "locked" in done.stdout  # the command ran and said it succeeded, as CRIU expects
    assert "CRIU" not in done.stdout


@needs_iptables
def test_the_real_command_would_have_cut_the_namespace(tmp_path: Path) -> None:
    """The control: the same lock through the node's own PATH leaves the DROP chain."""
    done = _lock_then_save(os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    assert done.returncode == 0, done.stderr
    assert ":CRIU - " in done.stdout
    assert "-A CRIU -j DROP" in done.stdout


@pytest.mark.skipif(not shutil.which("ip6tables-save"), reason="needs ip6tables")
@needs_iptables
def test_ipv6_lock_loads_nothing_either(tmp_path: Path) -> None:
    done = _lock_then_save(path_without_lock(tmp_path / "bin"), family="6")
    assert done.returncode == 0, done.stderr
    assert "CRIU" not in done.stdout


def test_path_puts_the_directory_first_and_keeps_the_rest(tmp_path: Path) -> None:
    directory = tmp_path / "bin"
    assert path_without_lock(directory, "/usr/sbin:/usr/bin") == f"{directory}:/usr/sbin:/usr/bin"
    assert path_without_lock(directory, "") == str(directory)
    true = shutil.which("true")
    assert sorted(p.name for p in directory.iterdir()) == sorted(LOCK_COMMANDS)
    for name in LOCK_COMMANDS:
        assert os.readlink(directory / name) == true


def test_a_second_call_mends_what_it_finds(tmp_path: Path) -> None:
    """A directory made before (a retried restore) is reused; a link pointing elsewhere is replaced."""
    directory = tmp_path / "bin"
    path_without_lock(directory, "")
    (directory / LOCK_COMMANDS[0]).unlink()
    (directory / LOCK_COMMANDS[0]).symlink_to("/bin/false")
    path_without_lock(directory, "")
    true = shutil.which("true")
    assert [os.readlink(directory / name) for name in LOCK_COMMANDS] == [true, true]
    for name in LOCK_COMMANDS:
        ran = subprocess.run([str(directory / name), "-w", "--noflush"], input=CRIU_LOCK, text=True, timeout=10)
        assert ran.returncode == 0
