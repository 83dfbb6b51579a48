"""`crishim doctor`'s AppArmor line, on hosts with and without AppArmor."""

from __future__ import annotations

import pytest
from crishim.oci import apparmor, apparmor_profile
from crishim.runtime.doctor import _apparmor


def host(monkeypatch: pytest.MonkeyPatch, *, enabled: bool, parser: str | None, loaded: set[str]) -> None:
    monkeypatch.setattr(apparmor, "apparmor_enabled", lambda: enabled)
    monkeypatch.setattr(apparmor, "loaded_profiles", lambda: loaded)
    monkeypatch.setattr(apparmor_profile, "find_parser", lambda: parser)


def test_without_apparmor_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch, enabled=False, parser=None, loaded=set())
    check = _apparmor()
    assert check.ok
    assert "not enabled" in check.detail


def test_enabled_without_parser_fails_until_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch, enabled=True, parser=None, loaded=set())
    check = _apparmor()
    assert not check.ok
    assert "'apparmor'" in check.detail
    host(monkeypatch, enabled=True, parser=None, loaded={"crishim-default"})
    assert _apparmor().ok


@pytest.mark.skipif(apparmor_profile.find_parser() is None, reason="apparmor_parser is not installed")
def test_enabled_with_parser_compiles_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = apparmor_profile.find_parser()
    host(monkeypatch, enabled=True, parser=parser, loaded={"crishim-default"})
    check = _apparmor()
    assert check.ok, check.detail
    assert "crishim-default loaded" in check.detail
