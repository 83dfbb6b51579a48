"""AppArmor: the default profile's text, what the parser says of it, loading it, and selection."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from crishim.oci import apparmor
from crishim.oci.apparmor import DEFAULT_PROFILE_NAME, select_profile
from crishim.oci.apparmor_profile import (
    LoadResult,
    daemon_label,
    ensure_default_profile,
    find_parser,
    render_default_profile,
    run_parser,
)
from crishim.oci.errors import FailedPrecondition, InvalidArgument
from crishim.oci.inputs import AppArmorProfile

PARSER = find_parser()
needs_parser = pytest.mark.skipif(PARSER is None, reason="apparmor_parser is not installed (Debian package 'apparmor')")


@pytest.fixture(autouse=True)
def no_recorded_failure() -> Iterator[None]:
    apparmor.record_default_failure("")
    yield
    apparmor.record_default_failure("")


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A policy directory holding the two includes the template uses."""
    root = tmp_path / "apparmor.d"
    for sub in ("tunables/global", "abstractions/base"):
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        (root / sub).write_text("")
    return root


def fake_parser(tmp_path: Path, rc: int = 0, stderr: str = "") -> Path:
    """A stand-in apparmor_parser recording its arguments and the profile it read."""
    script = tmp_path / "apparmor_parser"
    script.write_text(
        f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\ncat > {tmp_path}/stdin\necho '{stderr}' >&2\nexit {rc}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


# ---- the profile's text ------------------------------------------------------------------------


def test_default_profile_names_itself_and_includes_the_base(policy_dir: Path) -> None:
    text = render_default_profile(policy_dir=policy_dir)
    assert "#include <tunables/global>" in text
    assert "profile crishim-default flags=(attach_disconnected,mediate_deleted) {" in text
    assert "  #include <abstractions/base>" in text
    for rule in ("network,", "capability,", "file,", "umount,", "deny mount,"):
        assert f"  {rule}\n" in text
    assert text.rstrip().endswith("}")


def test_default_profile_denies_host_knobs(policy_dir: Path) -> None:
    text = render_default_profile(policy_dir=policy_dir)
    for rule in (
        "deny @{PROC}/* w,",
        "deny @{PROC}/{kcore,sysrq-trigger} rwklx,",
        "deny /sys/{[^f]*,f[^s]*,fs/[^c]*,fs/c[^g]*,fs/cg[^r]*}/** wklx,",
        "deny /sys/firmware/** rwklx,",
        "deny /sys/kernel/security/** rwklx,",
    ):
        assert f"  {rule}\n" in text


def test_default_profile_peers(policy_dir: Path) -> None:
    text = render_default_profile(policy_dir=policy_dir)
    assert "  ptrace (trace,read,tracedby,readby) peer=crishim-default,\n" in text
    assert "  signal (receive) peer=unconfined,\n" in text
    assert "  signal (send,receive) peer=crishim-default,\n" in text


def test_default_profile_lets_a_confined_daemon_signal(policy_dir: Path) -> None:
    assert "signal (receive) peer=crishim-daemon," in render_default_profile(
        label="crishim-daemon", policy_dir=policy_dir
    )
    # A label that is not a plain name would break the rule: left out.
    assert "peer=odd label" not in render_default_profile(label="odd label", policy_dir=policy_dir)


def test_default_profile_without_the_includes_defines_proc(tmp_path: Path) -> None:
    text = render_default_profile(policy_dir=tmp_path)
    assert "#include" not in text
    assert text.splitlines()[1] == "@{PROC}=/proc/"


def test_daemon_label_drops_the_mode(tmp_path: Path) -> None:
    current = tmp_path / "current"
    current.write_text("crishim-daemon (enforce)\n")
    assert daemon_label(current) == "crishim-daemon"
    current.write_text("unconfined\n")
    assert daemon_label(current) == "unconfined"
    assert daemon_label(tmp_path / "absent") == "unconfined"


# ---- what apparmor_parser says (compiled only: this host need not run AppArmor) ------------------


@needs_parser
async def test_parser_accepts_the_default_profile() -> None:
    assert PARSER is not None
    rc, err = await run_parser(PARSER, ["-Q", "-K"], render_default_profile(label="crishim-daemon"))
    assert rc == 0, err
    assert "error" not in err.lower(), err


@needs_parser
async def test_parser_accepts_the_profile_without_includes(tmp_path: Path) -> None:
    assert PARSER is not None
    rc, err = await run_parser(PARSER, ["-Q", "-K"], render_default_profile(policy_dir=tmp_path))
    assert rc == 0, err


@needs_parser
async def test_parser_reports_a_broken_profile() -> None:
    assert PARSER is not None
    broken = render_default_profile().replace("signal (receive)", "signal (recieve)")
    rc, err = await run_parser(PARSER, ["-Q", "-K"], broken)
    assert rc != 0
    assert "line" in err


# ---- loading at start-up -----------------------------------------------------------------------


async def test_nothing_is_loaded_without_apparmor(tmp_path: Path) -> None:
    parser = fake_parser(tmp_path)
    result = await ensure_default_profile(tmp_path / "state", enabled=False, parser=str(parser))
    assert result == LoadResult(loaded=False)
    assert not (tmp_path / "args").exists()


async def test_default_profile_is_loaded_and_recorded(tmp_path: Path) -> None:
    parser = fake_parser(tmp_path)
    profiles = tmp_path / "profiles"
    profiles.write_text("other (enforce)\n")
    result = await ensure_default_profile(tmp_path / "state", enabled=True, parser=str(parser), profiles_path=profiles)
    assert result == LoadResult(loaded=True)
    assert (tmp_path / "args").read_text().split() == ["-K", "-r"]
    sent = (tmp_path / "stdin").read_text()
    assert f"profile {DEFAULT_PROFILE_NAME} " in sent
    assert (tmp_path / "state" / "apparmor" / DEFAULT_PROFILE_NAME).read_text() == sent


async def test_loaded_profile_with_the_same_text_is_not_reloaded(tmp_path: Path) -> None:
    parser = fake_parser(tmp_path)
    profiles = tmp_path / "profiles"
    profiles.write_text("")
    await ensure_default_profile(tmp_path / "state", enabled=True, parser=str(parser), profiles_path=profiles)
    (tmp_path / "args").unlink()
    profiles.write_text(f"{DEFAULT_PROFILE_NAME} (enforce)\n")
    result = await ensure_default_profile(tmp_path / "state", enabled=True, parser=str(parser), profiles_path=profiles)
    assert result == LoadResult(loaded=True, skipped=True)
    assert not (tmp_path / "args").exists()


async def test_changed_text_is_reloaded(tmp_path: Path) -> None:
    parser = fake_parser(tmp_path)
    profiles = tmp_path / "profiles"
    profiles.write_text(f"{DEFAULT_PROFILE_NAME} (enforce)\n")
    record = tmp_path / "state" / "apparmor" / DEFAULT_PROFILE_NAME
    record.parent.mkdir(parents=True)
    record.write_text("an older template\n")
    result = await ensure_default_profile(tmp_path / "state", enabled=True, parser=str(parser), profiles_path=profiles)
    assert result == LoadResult(loaded=True)
    assert record.read_text() != "an older template\n"


async def test_parser_failure_is_named_when_a_container_asks_for_the_default(tmp_path: Path) -> None:
    parser = fake_parser(tmp_path, rc=1, stderr="AppArmor parser error: nope")
    profiles = tmp_path / "profiles"
    profiles.write_text("")
    result = await ensure_default_profile(tmp_path / "state", enabled=True, parser=str(parser), profiles_path=profiles)
    assert not result.loaded
    assert "nope" in result.error
    assert not (tmp_path / "state" / "apparmor" / DEFAULT_PROFILE_NAME).exists()
    with pytest.raises(FailedPrecondition, match="crishim-default.*not loaded.*nope"):
        select_profile(None, privileged=False, enabled=True, loaded=set())


async def test_missing_parser_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("crishim.oci.apparmor_profile.find_parser", lambda: None)
    profiles = tmp_path / "profiles"
    profiles.write_text("")
    result = await ensure_default_profile(tmp_path / "state", enabled=True, profiles_path=profiles)
    assert not result.loaded
    assert "'apparmor'" in result.error


# ---- selection ---------------------------------------------------------------------------------


def select_on_host(profile: AppArmorProfile | None, *, privileged: bool = False) -> str | None:
    return select_profile(profile, privileged=privileged, enabled=True, loaded={DEFAULT_PROFILE_NAME, "mine"})


def test_selection_on_an_apparmor_host() -> None:
    assert select_on_host(None) == DEFAULT_PROFILE_NAME
    assert select_on_host(AppArmorProfile("runtime/default")) == DEFAULT_PROFILE_NAME
    assert select_on_host(None, privileged=True) is None
    assert select_on_host(AppArmorProfile("runtime/default"), privileged=True) is None
    assert select_on_host(AppArmorProfile("unconfined")) is None
    assert select_on_host(AppArmorProfile("localhost", "mine")) == "mine"


def test_unloaded_localhost_profile_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="'other' is not loaded"):
        select_profile(AppArmorProfile("localhost", "other"), privileged=False, enabled=True, loaded=set())


def test_name_without_localhost_type_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        select_profile(AppArmorProfile("unconfined", "mine"), privileged=False, enabled=True, loaded=set())
