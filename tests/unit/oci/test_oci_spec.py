"""Spec builders and options: the generated spec, no runtime needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from crishim.oci import opts
from crishim.oci.apparmor import select_profile
from crishim.oci.capabilities import DEFAULT_CAPABILITIES, resolve
from crishim.oci.errors import FailedPrecondition, InvalidArgument
from crishim.oci.features import RuntimeFeatures
from crishim.oci.inputs import (
    AppArmorProfile,
    ContainerSpecInput,
    Device,
    IdMapping,
    Mount,
    NamespaceMode,
    Resources,
    SandboxSpecInput,
    SeccompProfile,
    SupplementalGroupsPolicy,
    UserNamespace,
    UserSpec,
)
from crishim.oci.oom import clamp_oom_score_adj, oom_score_adj_clamped
from crishim.oci.seccomp import default_profile, load_localhost_profile
from crishim.oci.spec import DEFAULT_MASKED_PATHS, build_container_spec, build_sandbox_spec
from crishim.oci.users import resolve_user


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\napp:x:1001:\nvideo:x:44:app,other\nstaff:x:50:\n")
    return tmp_path


def cinput(rootfs: Path, **kw: Any) -> ContainerSpecInput:
    base: dict[str, Any] = {
        "id": "c1",
        "rootfs": str(rootfs),
        "args": ("sh",),
        "sandbox_pid": 4242,
        "netns_path": "/run/netns/pod",
    }
    base.update(kw)
    return ContainerSpecInput(**base)


def ns(spec: dict[str, object]) -> dict[str, str | None]:
    return {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}  # type: ignore[index]


def test_capabilities_add_drop_all_and_clamping() -> None:
    bound = frozenset(DEFAULT_CAPABILITIES) | {"CAP_NET_ADMIN"}
    assert resolve(["NET_ADMIN"], ["kill"], bounding=bound) == sorted(
        (set(DEFAULT_CAPABILITIES) - {"CAP_KILL"}) | {"CAP_NET_ADMIN"},
        key=lambda c: resolve(["ALL"], [], bounding=bound).index(c),
    )
    assert resolve(["NET_RAW"], ["ALL"], bounding=bound) == ["CAP_NET_RAW"]
    assert "CAP_SYS_ADMIN" not in resolve(["ALL"], [], bounding=bound)  # clamped to the bounding set
    with pytest.raises(InvalidArgument, match="unknown capability"):
        resolve(["FLY"], [], bounding=bound)


def test_user_resolution_forms(rootfs: Path) -> None:
    # The primary gid leads the supplemental groups, as containerd reports them.
    assert resolve_user(rootfs, "app") == (1000, 1001, (1001, 44))
    assert resolve_user(rootfs, "1000") == (1000, 1001, (1001, 44))
    assert resolve_user(rootfs, "app:staff") == (1000, 50, (50, 44))
    assert resolve_user(rootfs, "4000:7") == (4000, 7, (7,))
    assert resolve_user(rootfs, "app", supplemental=(9,), policy=SupplementalGroupsPolicy.STRICT) == (
        1000,
        1001,
        (1001, 9),
    )
    with pytest.raises(InvalidArgument, match="nobody"):
        resolve_user(rootfs, "nobody")
    with pytest.raises(InvalidArgument, match="nogroup"):
        resolve_user(rootfs, "app:nogroup")


def test_passwd_symlink_out_of_rootfs_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "r/etc").mkdir(parents=True)
    (tmp_path / "r/etc/passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidArgument):
        resolve_user(tmp_path / "r", "root")


def test_container_joins_sandbox_namespaces_by_mode(rootfs: Path) -> None:
    spec = build_container_spec(cinput(rootfs, pid_mode=NamespaceMode.POD))
    assert ns(spec) == {
        "network": "/run/netns/pod",
        "uts": "/proc/4242/ns/uts",
        "pid": "/proc/4242/ns/pid",
        "ipc": "/proc/4242/ns/ipc",
        "mount": None,
    }
    spec = build_container_spec(
        cinput(
            rootfs,
            network_mode=NamespaceMode.NODE,
            ipc_mode=NamespaceMode.NODE,
            pid_mode=NamespaceMode.TARGET,
            target_pid=77,
        )
    )
    assert ns(spec) == {"pid": "/proc/77/ns/pid", "mount": None}
    assert "hostname" not in spec


def test_container_defaults_are_confined(rootfs: Path) -> None:
    spec = build_container_spec(cinput(rootfs, env=("A=1", "PATH=/x")))
    assert spec["process"]["env"] == ["PATH=/x", "A=1"]
    assert spec["linux"]["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert set(spec["process"]["capabilities"]["bounding"]) <= set(DEFAULT_CAPABILITIES)
    assert spec["process"]["capabilities"]["inheritable"] == []
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert "ro" in sys_mount["options"]
    json.dumps(spec)


def test_privileged_container_is_unconfined(rootfs: Path) -> None:
    spec = build_container_spec(cinput(rootfs, privileged=True, readonly_paths=("/proc/sys",)))
    assert spec["linux"]["maskedPaths"] == []
    assert spec["linux"]["readonlyPaths"] == []
    assert "seccomp" not in spec["linux"]
    assert {"allow": True, "access": "rwm"} in spec["linux"]["resources"]["devices"]
    assert any(d["path"] == "/dev/null" for d in spec["linux"]["devices"])
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sys_mount["options"]


def test_unmasked_proc_gives_empty_lists(rootfs: Path) -> None:
    spec = build_container_spec(cinput(rootfs, masked_paths=(), readonly_paths=()))
    assert spec["linux"]["maskedPaths"] == []
    assert spec["linux"]["readonlyPaths"] == []


def test_ambient_capabilities_are_inheritable(rootfs: Path) -> None:
    spec = build_container_spec(cinput(rootfs, capabilities_ambient=("NET_BIND_SERVICE",)))
    caps = spec["process"]["capabilities"]
    assert caps["ambient"] == caps["inheritable"] == ["CAP_NET_BIND_SERVICE"]


def test_mount_options_follow_the_checked_input(rootfs: Path) -> None:
    # The source is used as given: runtime/convert.py resolved symlinks and checked the rules.
    feats = RuntimeFeatures(recursive_read_only=True, idmap_mounts=True)
    spec = build_container_spec(
        cinput(
            rootfs,
            features=feats,
            mounts=(
                Mount("/a", "/host/a", readonly=True, propagation="rslave"),
                Mount("/b", str(rootfs), readonly=True, recursive_readonly=True),
                Mount("/c", "/host/c", propagation="rshared", options=("nosuid",)),
            ),
        )
    )
    by_dest = {m["destination"]: m for m in spec["mounts"]}
    assert by_dest["/a"]["source"] == "/host/a"
    assert by_dest["/a"]["options"] == ["rbind", "rslave", "ro"]
    assert by_dest["/b"]["options"] == ["rbind", "rprivate", "rro"]
    assert by_dest["/c"]["options"] == ["rbind", "rshared", "nosuid"]
    assert spec["linux"]["rootfsPropagation"] == "rshared"


def test_user_namespace_and_idmapped_mounts(rootfs: Path) -> None:
    m = (IdMapping(0, 100000, 65536),)
    feats = RuntimeFeatures(idmap_mounts=True)
    spec = build_container_spec(
        cinput(rootfs, userns=UserNamespace(m, m), features=feats, mounts=(Mount("/v", str(rootfs)),))
    )
    assert ns(spec)["user"] == "/proc/4242/ns/user"
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    vol = next(x for x in spec["mounts"] if x["destination"] == "/v")
    assert vol["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert "idmap" in vol["options"]
    # Without idmapped mounts in the handler, volumes stay as they are.
    plain = build_container_spec(cinput(rootfs, userns=UserNamespace(m, m), mounts=(Mount("/v", str(rootfs)),)))
    vol = next(x for x in plain["mounts"] if x["destination"] == "/v")
    assert "uidMappings" not in vol


def test_sysctls_and_oom_score_adj_are_written_as_given(rootfs: Path) -> None:
    # runtime/validate.py decided which sysctls a pod may set, runtime/oom.py clamped the score.
    spec = build_container_spec(cinput(rootfs, sysctls={"net.ipv4.ip_forward": "1"}, oom_score_adj=-999))
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert spec["process"]["oomScoreAdj"] == -999
    assert "oomScoreAdj" not in build_container_spec(cinput(rootfs))["process"]


def test_resources_and_devices(rootfs: Path) -> None:
    res = Resources(
        cpu_period=100000,
        cpu_quota=50000,
        cpu_shares=512,
        memory_limit=1 << 20,
        cpuset_cpus="0",
        unified={"memory.high": "1"},
        pids_limit=10,
    )
    spec = build_container_spec(cinput(rootfs, resources=res, devices=(Device("/dev/null", "/dev/mynull", "r"),)))
    r = spec["linux"]["resources"]
    assert r["cpu"] == {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"}
    assert r["memory"] == {"limit": 1 << 20, "swap": 1 << 20}
    assert r["unified"] == {"memory.high": "1"}
    assert r["pids"] == {"limit": 10}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "r"} in r["devices"]
    assert any(d["path"] == "/dev/mynull" and d["major"] == 1 for d in spec["linux"]["devices"])
    with pytest.raises(InvalidArgument, match="not a device"):
        build_container_spec(cinput(rootfs, devices=(Device("/etc/passwd", "/dev/x"),)))


def test_run_as_group_without_user_is_rejected(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="run_as_group"):
        build_container_spec(cinput(rootfs, user=UserSpec(gid=5)))
    spec = build_container_spec(cinput(rootfs, user=UserSpec(uid=1000, supplemental_groups=(7,))))
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [1001, 7, 44]}


def test_sandbox_spec(tmp_path: Path) -> None:
    inp = SandboxSpecInput(
        id="s",
        rootfs=str(tmp_path),
        args=("/pause",),
        hostname="pod-a",
        netns_path="/run/netns/x",
        shm_path="/run/shm/s",
        resolv_conf_path="/r/resolv.conf",
        oom_score_adj=-998,
        sysctls={"kernel.shm_rmid_forced": "1"},
        cgroups_path="/kubepods/pod1/s",
    )
    spec = build_sandbox_spec(inp)
    assert ns(spec) == {"network": "/run/netns/x", "ipc": None, "uts": None, "pid": None, "mount": None}
    assert spec["hostname"] == "pod-a"
    assert spec["root"]["readonly"] is True
    assert spec["process"]["oomScoreAdj"] == -998
    shm = next(m for m in spec["mounts"] if m["destination"] == "/dev/shm")
    assert shm["source"] == "/run/shm/s"
    assert shm["type"] == "bind"
    assert any(m["destination"] == "/etc/resolv.conf" for m in spec["mounts"])
    host = build_sandbox_spec(
        SandboxSpecInput(
            id="s",
            rootfs="/r",
            args=("/pause",),
            netns_path=None,
            ipc_mode=NamespaceMode.NODE,
            pid_mode=NamespaceMode.NODE,
        )
    )
    assert ns(host) == {"mount": None}
    assert "hostname" not in host


def test_oom_clamp() -> None:
    assert clamp_oom_score_adj(-998, floor=0) == 0
    assert oom_score_adj_clamped(-998, floor=0)
    assert not oom_score_adj_clamped(500, floor=0)
    assert clamp_oom_score_adj(2000, floor=-1000) == 1000


def test_seccomp_default_profile_depends_on_capabilities() -> None:
    plain = default_profile(DEFAULT_CAPABILITIES, machine="x86_64")
    allowed = set(plain["syscalls"][0]["names"])
    assert {"read", "execve", "openat", "socket"} <= allowed
    assert not {"mount", "reboot", "ptrace", "init_module", "kexec_load", "unshare"} & allowed
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    admin = default_profile([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"], machine="aarch64")
    assert {"mount", "unshare", "ptrace"} <= set(admin["syscalls"][0]["names"])
    assert admin["architectures"][0] == "SCMP_ARCH_AARCH64"


def test_seccomp_localhost_profile(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "archMap": [
                    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []},
                ],
                "syscalls": [
                    {"name": "mkdir", "action": "SCMP_ACT_ERRNO"},
                    {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                ],
            }
        )
    )
    prof = load_localhost_profile(str(p), [], machine="x86_64")
    assert prof["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert prof["syscalls"] == [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        load_localhost_profile(str(tmp_path / "bad.json"))
    with pytest.raises(InvalidArgument, match="cannot read"):
        load_localhost_profile(str(tmp_path / "missing.json"))


def test_seccomp_kinds_in_container_spec(rootfs: Path, tmp_path: Path) -> None:
    assert "seccomp" not in build_container_spec(cinput(rootfs, seccomp=SeccompProfile("unconfined")))["linux"]
    (tmp_path / "p.json").write_text('{"defaultAction": "SCMP_ACT_LOG"}')
    spec = build_container_spec(cinput(rootfs, seccomp=SeccompProfile("localhost", str(tmp_path / "p.json"))))
    assert spec["linux"]["seccomp"] == {"defaultAction": "SCMP_ACT_LOG"}


def test_apparmor_without_apparmor_on_host() -> None:
    assert select_profile(None, privileged=False, enabled=False) is None
    assert select_profile(AppArmorProfile("unconfined"), privileged=False, enabled=False) is None
    assert select_profile(AppArmorProfile("runtime/default"), privileged=False, enabled=False) is None
    with pytest.raises(FailedPrecondition, match="not enabled"):
        select_profile(AppArmorProfile("localhost", "mine"), privileged=False, enabled=False)


def test_apparmor_with_apparmor_on_host() -> None:
    loaded = {"crishim-default", "mine"}
    assert select_profile(None, privileged=False, enabled=True, loaded=loaded) == "crishim-default"
    assert select_profile(None, privileged=True, enabled=True, loaded=loaded) is None
    assert select_profile(AppArmorProfile("localhost", "mine"), privileged=False, enabled=True, loaded=loaded) == "mine"
    with pytest.raises(FailedPrecondition, match="not loaded"):
        select_profile(AppArmorProfile("localhost", "other"), privileged=False, enabled=True, loaded=loaded)


def test_with_mounts_replaces_same_destination() -> None:
    spec: dict[str, object] = {"mounts": [{"destination": "/dev/shm", "type": "tmpfs"}]}
    opts.apply(spec, opts.with_shm("/run/shm/x"))
    assert spec["mounts"] == [
        {
            "destination": "/dev/shm",
            "type": "bind",
            "source": "/run/shm/x",
            "options": ["rbind", "nosuid", "nodev", "noexec", "rprivate"],
        }
    ]


def test_annotations_the_runtime_would_obey_never_reach_the_spec() -> None:
    from crishim.oci.opts import with_annotations

    spec: dict[str, object] = {"annotations": {"run.oci.systemd.subgroup": ""}}
    with_annotations(
        {
            "org.systemd.property.Delegate": "true",
            "run.oci.keep_original_groups": "1",
            "io.crun.whatever": "x",
            "io.kubernetes.pod.name": "web",
        }
    )(spec)
    assert spec["annotations"] == {"run.oci.systemd.subgroup": "", "io.kubernetes.pod.name": "web"}
