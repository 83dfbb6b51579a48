"""critest "AppArmor": localhost profiles via the deprecated apparmor_profile field and the apparmor field.

critest skips the whole group when /sys/module/apparmor/parameters/enabled does not
read "Y", and otherwise loads two profiles (one denying all writes, one only auditing
them) with apparmor_parser. Each container runs `touch /tmp/foo`: under the deny
profile it must exit non-zero, under the audit profile zero, and a profile that is
not loaded must make CreateContainer fail.

On a host without AppArmor the "unloaded profile" specs still say something: a
runtime must refuse a localhost profile it cannot apply rather than run the
container unconfined, so those three run everywhere; the enforcing ones skip.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

PREFIX = "localhost/"
DENY_WRITE = "cri-validate-apparmor-test-deny-write"
AUDIT_WRITE = "cri-validate-apparmor-test-audit-write"
MISSING = "non-existent-profile"
TEST_PROFILES = f"""
#include <tunables/global>
profile {DENY_WRITE} flags=(attach_disconnected) {{
  #include <abstractions/base>
  file,
  deny /** w,
}}
profile {AUDIT_WRITE} flags=(attach_disconnected) {{
  #include <abstractions/base>
  file,
  audit /** w,
}}
"""


def apparmor_enabled() -> bool:
    try:
        return Path("/sys/module/apparmor/parameters/enabled").read_text().startswith("Y")
    except OSError:
        return False


@pytest.fixture(scope="module")
def loaded_profiles() -> Iterator[None]:
    """critest's loadTestProfiles: `apparmor_parser -r -W` the two test profiles (skip without AppArmor).

    Unlike critest, the profiles are unloaded again afterwards.
    """
    if not apparmor_enabled():
        pytest.skip("AppArmor is disabled on this host (/sys/module/apparmor/parameters/enabled is not Y)")
    parser = shutil.which("apparmor_parser")
    if parser is None:
        pytest.skip("AppArmor is enabled but apparmor_parser is not installed")
    with tempfile.NamedTemporaryFile("w", prefix="apparmor", dir="/tmp", suffix=".profiles") as f:
        f.write(TEST_PROFILES)
        f.flush()
        result = subprocess.run([parser, "-r", "-W", f.name], capture_output=True, text=True)
        # apparmor_parser does not always exit non-zero on failure: any stderr counts as one.
        assert result.returncode == 0, f"loading test profiles: {result.stderr}"
        assert not result.stderr, f"loading test profiles: {result.stderr}"
        try:
            yield
        finally:
            subprocess.run([parser, "-R", f.name], capture_output=True, check=False)


def security_context(*, legacy: str | None = None, field: str | None = None) -> pb.LinuxContainerSecurityContext:
    """The deprecated apparmor_profile string and/or the apparmor SecurityProfile (localhost type)."""
    sc = pb.LinuxContainerSecurityContext()
    if legacy is not None:
        sc.apparmor_profile = PREFIX + legacy
    if field is not None:
        sc.apparmor.CopyFrom(
            pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=PREFIX + field)
        )
    return sc


def apparmor_container(sc: pb.LinuxContainerSecurityContext) -> pb.ContainerConfig:
    """createContainerWithAppArmor's config: busybox `touch /tmp/foo` with `sc`."""
    return critest.container_config(
        "apparmor-test-", command=["touch", "/tmp/foo"], linux=pb.LinuxContainerConfig(security_context=sc)
    )


def unloaded_profile_refusal(name: str) -> str:
    """What CreateContainer answers for localhost/`name` when no such profile is loaded.

    Where AppArmor is off no profile can be applied, and the refusal says that instead.
    """
    if apparmor_enabled():
        return f"apparmor profile {name!r} is not loaded; load it with apparmor_parser first"
    return (
        f"apparmor profile localhost/{name} was asked for, but AppArmor is not enabled on this host; "
        "remove the profile or run the pod on a node with AppArmor"
    )


def check_refused(daemon: Daemon, sc: pb.LinuxContainerSecurityContext) -> None:
    """createContainerWithAppArmor(shouldSucceed=false): CreateContainer fails, no container ID.

    The refusal names the missing profile (FAILED_PRECONDITION: the request is fine, the node lacks it).
    """
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        config = apparmor_container(sc)
        critest.prepare_image(daemon, pod_cfg, config)
        cri.assert_refused(
            lambda: cri.create_container(daemon, pod_id, pod_cfg, config),
            grpc.StatusCode.FAILED_PRECONDITION,
            unloaded_profile_refusal(MISSING),
        )


def check_enforced(daemon: Daemon, sc: pb.LinuxContainerSecurityContext, *, write_allowed: bool) -> None:
    """createContainerWithAppArmor(shouldSucceed=true) + checkContainerApparmor."""
    with critest.default_pod(daemon) as (pod_id, pod_cfg):
        cid = critest.create_container(daemon, pod_id, pod_cfg, apparmor_container(sc))
        cri.start(daemon, cid)
        status = cri.wait_exited(daemon, cid)
        if write_allowed:
            assert status.exit_code == 0, f"touch failed under the audit-only profile: {status.exit_code}"
        else:
            assert status.exit_code != 0, "touch succeeded under the deny-write profile"


# ---- deprecated apparmor_profile field ---------------------------------------------------------


def test_legacy_field_unloaded_profile_is_refused(daemon: Daemon) -> None:
    """[k8s.io] AppArmor runtime should support deprecated apparmor_profile field should fail with an
    unloaded apparmor_profile"""
    # Runs without AppArmor too: the profile cannot be applied, so it must be refused.
    check_refused(daemon, security_context(legacy=MISSING))


def test_legacy_field_deny_write_profile_blocks_writes(daemon: Daemon, loaded_profiles: None) -> None:
    """[k8s.io] AppArmor runtime should support deprecated apparmor_profile field should enforce a
    apparmor_profile blocking writes"""
    check_enforced(daemon, security_context(legacy=DENY_WRITE), write_allowed=False)


def test_legacy_field_audit_profile_allows_writes(daemon: Daemon, loaded_profiles: None) -> None:
    """[k8s.io] AppArmor runtime should support deprecated apparmor_profile field should enforce a
    permissive deprecated profile"""
    check_enforced(daemon, security_context(legacy=AUDIT_WRITE), write_allowed=True)


# ---- apparmor field ----------------------------------------------------------------------------


def test_apparmor_field_unloaded_profile_is_refused(daemon: Daemon) -> None:
    """[k8s.io] AppArmor runtime should support apparmor field should fail with an unloaded
    apparmor_profile"""
    check_refused(daemon, security_context(field=MISSING))


def test_apparmor_field_deny_write_profile_blocks_writes(daemon: Daemon, loaded_profiles: None) -> None:
    """[k8s.io] AppArmor runtime should support apparmor field should enforce a apparmor_profile blocking
    writes"""
    check_enforced(daemon, security_context(field=DENY_WRITE), write_allowed=False)


def test_apparmor_field_audit_profile_allows_writes(daemon: Daemon, loaded_profiles: None) -> None:
    """[k8s.io] AppArmor runtime should support apparmor field should enforce a permissive deprecated
    profile"""
    check_enforced(daemon, security_context(field=AUDIT_WRITE), write_allowed=True)


# ---- both set: the apparmor field wins ---------------------------------------------------------


def test_both_fields_unloaded_profile_is_refused(daemon: Daemon) -> None:
    """[k8s.io] AppArmor runtime should prefer new apparmor field should fail with an unloaded
    apparmor_profile"""
    check_refused(daemon, security_context(legacy=MISSING, field=MISSING))


def test_new_field_deny_write_profile_wins_over_legacy(daemon: Daemon, loaded_profiles: None) -> None:
    """[k8s.io] AppArmor runtime should prefer new apparmor field should enforce a apparmor_profile
    blocking writes"""
    # The legacy field names a missing profile: only preferring the new field lets this run.
    check_enforced(daemon, security_context(legacy=MISSING, field=DENY_WRITE), write_allowed=False)


def test_new_field_audit_profile_wins_over_legacy(daemon: Daemon, loaded_profiles: None) -> None:
    """[k8s.io] AppArmor runtime should prefer new apparmor field should work with apparmor profile"""
    check_enforced(daemon, security_context(legacy=MISSING, field=AUDIT_WRITE), write_allowed=True)
