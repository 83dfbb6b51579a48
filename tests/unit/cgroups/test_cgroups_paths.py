from __future__ import annotations

import pytest
from crishim.cgroups.errors import InvalidArgument
from crishim.cgroups.paths import (
    cgroups_path_to_fs,
    container_cgroups_path,
    default_parent,
    expand_slice,
    is_pod_cgroup,
    parent_to_fs,
    to_fs,
)


def test_cgroupfs_container_path_appends_id_to_parent() -> None:
    assert container_cgroups_path("/kubepods/burstable/pod1", "abc", "cgroupfs") == "/kubepods/burstable/pod1/abc"


def test_systemd_container_path_is_slice_prefix_name() -> None:
    path = container_cgroups_path("kubepods-burstable-pod1.slice", "abc", "systemd")
    assert path == "kubepods-burstable-pod1.slice:crishim:abc"


def test_empty_parent_uses_the_default_parent_of_the_driver() -> None:
    assert container_cgroups_path("", "abc", "cgroupfs") == "/crishim/abc"
    assert container_cgroups_path("", "abc", "systemd") == "crishim.slice:crishim:abc"
    assert default_parent("cgroupfs") == "/crishim"
    assert default_parent("systemd") == "crishim.slice"


def test_slice_expands_into_nested_slices() -> None:
    assert expand_slice("a-b-c.slice") == "/a.slice/a-b.slice/a-b-c.slice"
    assert expand_slice("kubepods.slice") == "/kubepods.slice"
    assert expand_slice("-.slice") == "/"


@pytest.mark.parametrize("bad", ["a--b.slice", "-a.slice", "a-.slice", "a/b.slice", "kubepods"])
def test_malformed_slice_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        expand_slice(bad)


def test_systemd_cgroups_path_maps_to_scope_under_expanded_slice() -> None:
    fs = cgroups_path_to_fs("kubepods-burstable-pod1.slice:crishim:abc", "systemd")
    assert fs == "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/crishim-abc.scope"


def test_systemd_cgroups_path_naming_a_slice_keeps_it() -> None:
    assert cgroups_path_to_fs("kubepods.slice:crishim:kubepods-pod1.slice", "systemd") == (
        "/kubepods.slice/kubepods-pod1.slice"
    )


def test_cgroupfs_path_round_trips_to_fs() -> None:
    assert cgroups_path_to_fs("/kubepods/pod1/abc", "cgroupfs") == "/kubepods/pod1/abc"
    assert to_fs("kubepods/pod1/", "cgroupfs") == "/kubepods/pod1"


def test_parent_of_other_driver_is_refused_with_the_fix() -> None:
    with pytest.raises(InvalidArgument, match="same cgroup driver"):
        container_cgroups_path("kubepods.slice", "abc", "cgroupfs")
    with pytest.raises(InvalidArgument, match="same cgroup driver"):
        container_cgroups_path("/kubepods", "abc", "systemd")


def test_parent_to_fs_per_driver() -> None:
    assert parent_to_fs("kubepods-besteffort.slice", "systemd") == "/kubepods.slice/kubepods-besteffort.slice"
    assert parent_to_fs("/kubepods/besteffort", "cgroupfs") == "/kubepods/besteffort"


def test_dotdot_and_bad_ids_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        container_cgroups_path("/kubepods/../etc", "abc", "cgroupfs")
    with pytest.raises(InvalidArgument):
        container_cgroups_path("/kubepods", "a/b", "cgroupfs")
    with pytest.raises(InvalidArgument, match="unknown cgroup driver"):
        container_cgroups_path("/kubepods", "abc", "lxc")


def test_systemd_parent_given_as_a_path_names_its_last_slice() -> None:
    # critest sends "/test.slice"; an expanded path names the same unit as its last component.
    assert container_cgroups_path("/test.slice", "abc", "systemd") == "test.slice:crishim:abc"
    assert parent_to_fs("/kubepods.slice/kubepods-pod1.slice", "systemd") == "/kubepods.slice/kubepods-pod1.slice"
    assert parent_to_fs("/test.slice", "systemd") == "/test.slice"


def test_systemd_pod_slice_resolves_for_stats() -> None:
    from crishim.cgroups.paths import to_fs

    assert (
        to_fs("kubepods-burstable-pod1.slice", "systemd")
        == "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
    )
    assert to_fs("test.slice:crishim:abc", "systemd") == "/test.slice/crishim-abc.scope"


UID = "5a1e3f2c-7b4d-4c1e-9f00-0123456789ab"


@pytest.mark.parametrize(
    "parent",
    [
        f"/kubepods/burstable/pod{UID}",
        f"/kubepods/pod{UID}/",
        f"kubepods-burstable-pod{UID.replace('-', '_')}.slice",
        f"kubepods-pod{UID.replace('-', '_')}.slice",
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice",
    ],
)
def test_the_kubelets_pod_cgroup_names_the_pod(parent: str) -> None:
    assert is_pod_cgroup(parent, UID)


@pytest.mark.parametrize(
    "parent",
    ["", "/crishim", "crishim.slice", "/test.slice", "/kubepods/burstable", "kubepods-burstable.slice",
     "/kubepods/burstable/pod0000", f"/kubepods/pod{UID}/extra"],
)  # fmt: skip
def test_a_shared_or_foreign_parent_is_not_the_pods_cgroup(parent: str) -> None:
    assert not is_pod_cgroup(parent, UID)


def test_a_pod_without_uid_has_no_cgroup_of_its_own() -> None:
    assert not is_pod_cgroup("/kubepods/pod", "")
