"""The CRI's two ways of naming an AppArmor profile, as the kubelet and critest send them."""

from __future__ import annotations

import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.oci.inputs import AppArmorProfile
from crishim.runtime.convert import apparmor_profile
from crishim.runtime.errors import InvalidArgument

FIELD = "config.linux.security_context"


def localhost(ref: str) -> pb.SecurityProfile:
    return pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=ref)


@pytest.mark.parametrize("ref", ["mine", "localhost/mine"])
def test_localhost_ref_with_or_without_the_prefix(ref: str) -> None:
    # The kubelet sends the bare profile name in localhost_ref; critest sends "localhost/NAME".
    assert apparmor_profile(localhost(ref), "", FIELD) == AppArmorProfile("localhost", "mine")


def test_apparmor_field_wins_over_the_deprecated_string() -> None:
    assert apparmor_profile(localhost("mine"), "localhost/other", FIELD) == AppArmorProfile("localhost", "mine")


def test_deprecated_string_forms() -> None:
    assert apparmor_profile(None, "localhost/mine", FIELD) == AppArmorProfile("localhost", "mine")
    assert apparmor_profile(None, "runtime/default", FIELD) == AppArmorProfile("runtime/default")
    assert apparmor_profile(None, "unconfined", FIELD) == AppArmorProfile("unconfined")
    assert apparmor_profile(None, "", FIELD) is None


def test_security_profile_types() -> None:
    unconfined = pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)
    default = pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault)
    assert apparmor_profile(unconfined, "", FIELD) == AppArmorProfile("unconfined")
    assert apparmor_profile(default, "", FIELD) == AppArmorProfile("runtime/default")


def test_empty_localhost_ref_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="localhost_ref is empty"):
        apparmor_profile(localhost(""), "", FIELD)


def test_unknown_deprecated_string_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="not runtime/default, unconfined or localhost/NAME"):
        apparmor_profile(None, "docker-default", FIELD)
