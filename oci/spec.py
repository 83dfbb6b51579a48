"""The default Linux spec and the two builders: sandbox (infra) and container.

Both builders are functions of their input records, which runtime/ has
already checked against the CRI rules (runtime/validate.py): nothing here
refuses a combination of fields. They read the host only where the host is
the truth: the capability bounding set, device numbers, a Localhost seccomp
file and the image's /etc/passwd.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from . import apparmor, capabilities, devices, opts, seccomp
from .errors import InvalidArgument
from .inputs import (
    ContainerSpecInput,
    IdMapping,
    Mount,
    NamespaceMode,
    SandboxSpecInput,
    SeccompProfile,
)
from .opts import Spec, SpecOpt
from .users import resolve_user_spec

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)  # fmt: skip

# Device nodes every container gets (besides what the runtime creates for
# /dev/console and /dev/pts), with the cgroup rules allowing them.
_DEFAULT_DEVICE_RULES: list[dict[str, Any]] = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # tty
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},  # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # pts/*
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},  # net/tun
]


def default_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]  # fmt: skip


def default_spec(rootfs: str) -> Spec:
    """A complete, runnable spec: /bin/sh as root in fresh namespaces, default confinement."""
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh"],
            "env": [DEFAULT_PATH],
            "cwd": "/",
            "capabilities": {},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}],
            "noNewPrivileges": False,
        },
        "root": {"path": rootfs, "readonly": False},
        "mounts": default_mounts(),
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
            "resources": {"devices": [dict(r) for r in _DEFAULT_DEVICE_RULES]},
        },
    }


def _file_binds(resolv: str, hostname: str, hosts: str, readonly: bool) -> list[dict[str, Any]]:
    out = []
    for dest, src in (("/etc/resolv.conf", resolv), ("/etc/hostname", hostname), ("/etc/hosts", hosts)):
        if src:
            o = ["rbind", "rprivate"] + (["ro"] if readonly else [])
            out.append({"destination": dest, "type": "bind", "source": src, "options": o})
    return out


def build_sandbox_spec(inp: SandboxSpecInput) -> Spec:
    """The infra container: holds the pod's IPC, UTS, (POD mode) PID and network namespaces."""
    spec = default_spec(inp.rootfs)
    net_host = inp.netns_path is None
    ipc_host = inp.ipc_mode is NamespaceMode.NODE
    o: list[SpecOpt] = [
        opts.with_process_args(inp.args),
        opts.with_cwd("/"),
        opts.with_readonly_rootfs(inp.readonly_rootfs),
        opts.with_namespace("network", inp.netns_path) if not net_host else opts.without_namespace("network"),
        opts.without_namespace("ipc") if ipc_host else opts.with_namespace("ipc"),
        opts.without_namespace("uts") if net_host else opts.with_namespace("uts"),
        opts.without_namespace("pid") if inp.pid_mode is NamespaceMode.NODE else opts.with_namespace("pid"),
        opts.with_hostname("" if net_host else inp.hostname),
        opts.with_shm("/dev/shm" if ipc_host else inp.shm_path),
        opts.with_mounts(_file_binds(inp.resolv_conf_path, inp.hostname_path, inp.hosts_path, True)),
        opts.with_sysctls(inp.sysctls),
        opts.with_cgroups_path(inp.cgroups_path),
        opts.with_oom_score_adj(inp.oom_score_adj),
        opts.with_annotations(inp.annotations),
    ]
    caps = capabilities.resolve((), (), base=capabilities.DEFAULT_CAPABILITIES)
    if inp.privileged:
        caps = capabilities.resolve(("ALL",), ())
    o.append(opts.with_capabilities(caps))
    if inp.resources is not None:
        o.append(opts.with_resources(inp.resources))
    if inp.userns is not None:
        o.append(opts.with_userns(inp.userns.uid_mappings, inp.userns.gid_mappings))
        # The pod's netns is made by the daemon, so its owner is the host's user namespace
        # either way: a fresh sysfs mount is refused, a bind of the host's works.
        o.append(_sysfs_for_userns(True))
    if inp.privileged:
        o.append(opts.with_privileged())
    else:
        o.append(opts.with_seccomp(_seccomp(inp.seccomp, caps)))
    return opts.apply(spec, *o)


def _sysfs_for_userns(net_host: bool) -> SpecOpt:
    """sysfs cannot be mounted in a user namespace that does not own the netns; bind it instead."""

    def opt(spec: Spec) -> None:
        if not net_host:
            return
        for m in spec["mounts"]:
            if m["destination"] == "/sys":
                m.update(type="bind", source="/sys", options=["rbind", "nosuid", "noexec", "nodev", "ro"])

    return opt


def _seccomp(profile: SeccompProfile, caps: list[str]) -> dict[str, Any] | None:
    if profile.kind == "unconfined":
        return None
    if profile.kind == "localhost":
        return seccomp.load_localhost_profile(profile.path, caps)
    return seccomp.default_profile(caps)


def _ns_path(pid: int | None, kind: str, what: str) -> str:
    if pid is None:
        raise InvalidArgument(f"{what}: the PID of the process whose namespace to join is not known")
    return f"/proc/{pid}/ns/{kind}"


def _namespace_opts(inp: ContainerSpecInput) -> list[SpecOpt]:
    o: list[SpecOpt] = []
    spid = inp.sandbox_pid
    # Network: POD joins the pinned pod netns (or the sandbox's), NODE is the host's.
    net_host = inp.network_mode is NamespaceMode.NODE
    if net_host:
        o.append(opts.without_namespace("network"))
    elif inp.network_mode is NamespaceMode.POD:
        o.append(opts.with_namespace("network", inp.netns_path or _ns_path(spid, "net", "network POD mode")))
    elif inp.network_mode is NamespaceMode.TARGET:
        o.append(opts.with_namespace("network", _ns_path(inp.target_pid, "net", "network TARGET mode")))
    else:
        o.append(opts.with_namespace("network"))
    # UTS follows the network: a host-network pod sees the host's name. A
    # container built without a sandbox (tests, probes) gets its own.
    if net_host:
        o.append(opts.without_namespace("uts"))
    elif "uts" in inp.pod_namespaces:
        o.append(opts.with_namespace("uts", inp.pod_namespaces["uts"]))
    else:
        o.append(opts.with_namespace("uts", None if spid is None else _ns_path(spid, "uts", "UTS")))
    for kind, proc, mode in (("pid", "pid", inp.pid_mode), ("ipc", "ipc", inp.ipc_mode)):
        if mode is NamespaceMode.NODE:
            o.append(opts.without_namespace(kind))
        elif mode is NamespaceMode.POD and kind in inp.pod_namespaces:
            o.append(opts.with_namespace(kind, inp.pod_namespaces[kind]))
        elif mode is NamespaceMode.POD:
            o.append(opts.with_namespace(kind, _ns_path(spid, proc, f"{kind} POD mode")))
        elif mode is NamespaceMode.TARGET:
            o.append(opts.with_namespace(kind, _ns_path(inp.target_pid, proc, f"{kind} TARGET mode")))
        else:
            o.append(opts.with_namespace(kind))
    if inp.userns is not None:
        path = _ns_path(spid, "user", "user namespace") if spid is not None else None
        o.append(opts.with_userns(inp.userns.uid_mappings, inp.userns.gid_mappings, path))
        o.append(_sysfs_for_userns(net_host or inp.network_mode is not NamespaceMode.CONTAINER))
    return o


def _mount_spec(m: Mount) -> dict[str, Any]:
    if m.type == "bind":
        options = ["rbind", "rprivate" if m.propagation == "private" else m.propagation]
    else:
        options = []
    if m.recursive_readonly:
        options.append("rro")
    elif m.readonly:
        options.append("ro")
    options.extend(m.options)
    out: dict[str, Any] = {
        "destination": m.container_path,
        "type": m.type,
        "source": m.host_path,
        "options": options,
    }
    if m.uid_mappings or m.gid_mappings:
        out["uidMappings"] = [x.to_spec() for x in m.uid_mappings]
        out["gidMappings"] = [x.to_spec() for x in m.gid_mappings]
        options.append("idmap")
    return out


def _rootfs_propagation(mounts: tuple[Mount, ...]) -> SpecOpt:
    """Bind propagation only crosses into the container if its root mount propagates too.

    A bidirectional (rshared) volume needs a shared root; a host-to-container (rslave)
    one a slave root; otherwise the runtime's private default stays.
    """
    kinds = {m.propagation for m in mounts}
    wanted = "rshared" if "rshared" in kinds else ("rslave" if "rslave" in kinds else None)

    def opt(spec: Spec) -> None:
        if wanted:
            spec.setdefault("linux", {})["rootfsPropagation"] = wanted

    return opt


def idmapped(m: Mount, uid_maps: tuple[IdMapping, ...], gid_maps: tuple[IdMapping, ...]) -> Mount:
    """`m` with mount mappings taken from the pod's user namespace (when it has none)."""
    if m.uid_mappings or m.gid_mappings:
        return m
    return dataclasses.replace(m, uid_mappings=uid_maps, gid_mappings=gid_maps)


def _mounts_in_userns(inp: ContainerSpecInput) -> tuple[Mount, ...]:
    """The mounts, volumes idmapped to the pod's user namespace where the handler can."""
    if inp.userns is None or not inp.features.idmap_mounts:
        return inp.mounts
    # Directories only: the kernel refuses to idmap a single-file bind (EPERM from
    # mount_setattr), and the pod's small files are world-readable anyway.
    return tuple(
        idmapped(m, inp.userns.uid_mappings, inp.userns.gid_mappings)
        if m.follow_pod_userns and os.path.isdir(m.host_path)
        else m
        for m in inp.mounts
    )


def build_container_spec(inp: ContainerSpecInput) -> Spec:
    """A workload container joining its sandbox's namespaces."""
    spec = default_spec(inp.rootfs)
    users_root = inp.rootfs_path_for_users or inp.rootfs
    uid, gid, groups = resolve_user_spec(users_root, inp.user)
    bounding = capabilities.host_bounding_set()
    if inp.privileged:
        caps = sorted(bounding, key=capabilities.ALL_CAPABILITIES.index)
    else:
        caps = capabilities.resolve(inp.capabilities_add, inp.capabilities_drop, bounding=bounding)
    ambient = [capabilities.normalize(a) for a in inp.capabilities_ambient]
    net_host = inp.network_mode is NamespaceMode.NODE
    o: list[SpecOpt] = [
        opts.with_process_args(inp.args),
        opts.with_env(inp.env),
        opts.with_cwd(inp.cwd),
        opts.with_user(uid, gid, groups),
        opts.with_tty(inp.tty),
        opts.with_capabilities(caps, ambient),
        opts.with_no_new_privs(inp.no_new_privs),
        opts.with_readonly_rootfs(inp.readonly_rootfs),
        opts.with_hostname("" if net_host else inp.hostname),
        *_namespace_opts(inp),
        opts.with_sysctls(inp.sysctls),
        opts.with_cgroups_path(inp.cgroups_path),
        opts.with_annotations(inp.annotations),
        opts.with_rlimits(inp.rlimits),
    ]
    if inp.oom_score_adj is not None:
        o.append(opts.with_oom_score_adj(inp.oom_score_adj))
    if inp.resources is not None:
        o.append(opts.with_resources(inp.resources))
    if inp.masked_paths is not None:
        o.append(opts.with_masked_paths(inp.masked_paths))
    if inp.readonly_paths is not None:
        o.append(opts.with_readonly_paths(inp.readonly_paths))
    user_mounts = _mounts_in_userns(inp)
    o.append(opts.with_mounts([_mount_spec(m) for m in user_mounts]))
    o.append(_rootfs_propagation(user_mounts))
    dev_pairs = [devices.device_from_host(d.host_path, d.container_path, d.permissions) for d in inp.devices]
    if inp.privileged:
        dev_pairs = devices.host_devices() + dev_pairs
        o.append(opts.with_devices([d for d, _ in dev_pairs], [{"allow": True, "access": "rwm"}]))
    else:
        o.append(opts.with_devices([d for d, _ in dev_pairs], [r for _, r in dev_pairs]))
    profile = apparmor.select_profile(inp.apparmor, privileged=inp.privileged)
    if inp.privileged:
        o.append(opts.with_privileged())
    else:
        o.append(opts.with_seccomp(_seccomp(inp.seccomp, caps)))
        o.append(opts.with_apparmor(profile))
    return opts.apply(spec, *o)
