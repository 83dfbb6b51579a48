"""With the systemd cgroup driver every runtime invocation carries --systemd-cgroup."""

from __future__ import annotations

from pathlib import Path

from crishim.oci.conmon import ConmonLaunch, build_args
from crishim.oci.runtime import OciRuntime


def test_runtime_global_args_follow_the_cgroup_driver() -> None:
    assert OciRuntime("runc", "/usr/sbin/runc", Path("/r"), "runc").global_args() == ["--root", "/r"]
    systemd = OciRuntime("runc", "/usr/sbin/runc", Path("/r"), "runc", systemd_cgroup=True)
    assert systemd.base_args() == ["/usr/sbin/runc", "--root", "/r", "--systemd-cgroup"]


def test_conmon_passes_the_runtime_global_args() -> None:
    runtime = OciRuntime("runc", "/usr/sbin/runc", Path("/r"), "runc", systemd_cgroup=True)
    launch = ConmonLaunch(cid="c", bundle=Path("/b"), log_path=Path("/l"), exit_dir=Path("/e"), socket_dir=Path("/s"))
    args = build_args("conmon", runtime.base_args(), launch)
    pairs = list(zip(args, args[1:], strict=False))
    assert ("-r", "/usr/sbin/runc") in pairs
    runtime_args = [value for flag, value in pairs if flag == "--runtime-arg"]
    assert runtime_args == ["--root", "/r", "--systemd-cgroup"]


def test_systemd_cgroups_path_shapes_the_scope_through_annotations() -> None:
    from crishim.oci.opts import apply, with_annotations, with_cgroups_path

    spec = apply({"process": {}}, with_cgroups_path("kubepods-pod1.slice:crishim:abc"))
    assert spec["linux"]["cgroupsPath"] == "kubepods-pod1.slice:crishim:abc"
    assert spec["annotations"]["org.systemd.property.CollectMode"] == "'inactive-or-failed'"
    assert spec["annotations"]["run.oci.systemd.subgroup"] == ""
    # A pod's own annotations cannot reshape the scope: the runtime would obey them.
    spec = apply(spec, with_annotations({"run.oci.systemd.subgroup": "sub"}))
    assert spec["annotations"]["run.oci.systemd.subgroup"] == ""


def test_cgroupfs_path_adds_no_systemd_annotations() -> None:
    from crishim.oci.opts import apply, with_cgroups_path

    spec = apply({"process": {}}, with_cgroups_path("/kubepods/pod1/abc"))
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod1/abc"
    assert "annotations" not in spec
