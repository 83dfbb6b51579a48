"""AppArmor profile selection for a container spec.

On a host without AppArmor we follow the spirit of containerd: nothing can
be enforced, so "unconfined" and "runtime/default" (the runtime's default,
which is none here) yield no profile, while an explicit localhost/NAME is
refused: the pod asked for a specific confinement and silently running it
unconfined would be a security surprise. containerd refuses runtime/default
too; we accept it because the kubelet may send it for every pod and the
runtime's default on such a host is genuinely "no profile" (as CRI-O does).

On an AppArmor host the default is crishim's own profile, which the daemon
loads at start-up (apparmor_profile.py). The CRI's `localhost/NAME` must name
a profile already loaded: a pod never runs under a profile it did not ask for.
"""

from __future__ import annotations

from pathlib import Path

from .errors import FailedPrecondition, InvalidArgument
from .inputs import AppArmorProfile

DEFAULT_PROFILE_NAME = "crishim-default"
_ENABLED = Path("/sys/module/apparmor/parameters/enabled")
_PROFILES = Path("/sys/kernel/security/apparmor/profiles")
# Why the default profile could not be loaded at start-up ("" when it was, or not tried).
_default_failure = ""


def record_default_failure(reason: str) -> None:
    global _default_failure
    _default_failure = reason


def default_failure() -> str:
    return _default_failure


def apparmor_enabled(enabled_path: Path = _ENABLED) -> bool:
    try:
        return enabled_path.read_text().strip().upper().startswith("Y")
    except OSError:
        return False


def loaded_profiles(profiles_path: Path = _PROFILES) -> set[str]:
    """Names of the loaded profiles ("name (enforce)" lines)."""
    try:
        text = profiles_path.read_text()
    except OSError:
        return set()
    return {line.rsplit(" (", 1)[0] for line in text.splitlines() if line.strip()}


def select_profile(
    profile: AppArmorProfile | None,
    *,
    privileged: bool,
    enabled: bool | None = None,
    loaded: set[str] | None = None,
) -> str | None:
    """The process.apparmorProfile value, or None to leave it unset."""
    on = apparmor_enabled() if enabled is None else enabled
    if profile is not None and profile.kind != "localhost" and profile.name:
        raise InvalidArgument("apparmor: a profile name may only be given with the localhost type")
    if not on:
        if profile is not None and profile.kind == "localhost":
            raise FailedPrecondition(
                f"apparmor profile localhost/{profile.name} was asked for, but AppArmor is not enabled "
                "on this host; remove the profile or run the pod on a node with AppArmor"
            )
        return None
    if profile is None or profile.kind == "runtime/default":
        # kubernetes#51746: the default applies when nothing is asked, except
        # for privileged containers, which run unconfined.
        if privileged:
            return None
        names = loaded_profiles() if loaded is None else loaded
        if DEFAULT_PROFILE_NAME not in names:
            cause = f" ({_default_failure})" if _default_failure else ""
            raise FailedPrecondition(
                f"AppArmor is enabled but the default profile {DEFAULT_PROFILE_NAME!r} is not loaded{cause}; "
                "fix that and restart crishim, or ask for the unconfined profile"
            )
        return DEFAULT_PROFILE_NAME
    if profile.kind == "unconfined":
        return None
    if not profile.name:
        raise InvalidArgument("apparmor: the localhost type needs a profile name")
    names = loaded_profiles() if loaded is None else loaded
    if profile.name not in names:
        raise FailedPrecondition(f"apparmor profile {profile.name!r} is not loaded; load it with apparmor_parser first")
    return profile.name
