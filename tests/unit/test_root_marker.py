"""The `root` marker: without root its tests skip, except under CI, where the run fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT_TEST = "tests/integration/test_zombies.py"  # one small module marked root
AS_NON_ROOT = "import os, sys, pytest; os.geteuid = lambda: 1000; sys.exit(pytest.main(sys.argv[1:]))"


def run_as_non_root(ci: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A pytest run in a child that reports a non-root euid, with CI=`ci`."""
    env = {**os.environ, "CI": ci}
    return subprocess.run(
        [sys.executable, "-c", AS_NON_ROOT, "-q", "-p", "no:cacheprovider", ROOT_TEST, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_ci_root_tests_skip() -> None:
    run = run_as_non_root("")
    assert run.returncode == pytest.ExitCode.OK, run.stdout + run.stderr
    assert "needs root" in run.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_run_without_root_fails(ci: str) -> None:
    run = run_as_non_root(ci)
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert "CI=true and not root" in run.stderr


def test_under_ci_deselecting_the_root_tests_is_allowed() -> None:
    run = run_as_non_root("true", "-m", "not root")
    assert run.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, run.stdout + run.stderr
