"""Small spec options: each `with_*` returns a function that edits a spec dict.

A spec is built as `default_spec()` followed by options applied in order,
so each concern (user, capabilities, mounts...) lives in one place and the
builders in spec.py read as a list of decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .inputs import HugepageLimit, IdMapping, Resources

Spec = dict[str, Any]
SpecOpt = Callable[[Spec], None]

NAMESPACE_KINDS = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup")


def apply(spec: Spec, *opts: SpecOpt) -> Spec:
    """Apply options in order and return the same spec."""
    for opt in opts:
        opt(spec)
    return spec


def _linux(spec: Spec) -> dict[str, Any]:
    linux: dict[str, Any] = spec.setdefault("linux", {})
    return linux


def with_hostname(name: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        if name:
            spec["hostname"] = name
        else:
            spec.pop("hostname", None)

    return opt


def with_process_args(args: Sequence[str]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["process"]["args"] = list(args)

    return opt


def with_env(env: Iterable[str]) -> SpecOpt:
    """Set environment entries KEY=VALUE; a later entry for a key replaces an earlier one."""

    def opt(spec: Spec) -> None:
        merged: dict[str, str] = {}
        for entry in [*spec["process"].get("env", []), *env]:
            key = entry.split("=", 1)[0]
            merged[key] = entry
        spec["process"]["env"] = list(merged.values())

    return opt


def with_cwd(cwd: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["process"]["cwd"] = cwd or "/"

    return opt


def with_user(uid: int, gid: int, additional_gids: Sequence[int] = ()) -> SpecOpt:
    def opt(spec: Spec) -> None:
        user: dict[str, Any] = {"uid": uid, "gid": gid}
        if additional_gids:
            user["additionalGids"] = list(additional_gids)
        spec["process"]["user"] = user

    return opt


def with_capabilities(caps: Iterable[str], ambient: Iterable[str] = ()) -> SpecOpt:
    """Bounding, effective and permitted = caps; inheritable only what ambient needs.

    Inheritable stays empty otherwise (CVE-2022-24769); an ambient capability
    must be permitted and inheritable for the kernel to raise it.
    """

    def opt(spec: Spec) -> None:
        c = list(caps)
        amb = [a for a in ambient if a in c]
        spec["process"]["capabilities"] = {
            "bounding": c, "effective": c, "permitted": c, "inheritable": amb, "ambient": amb,
        }  # fmt: skip

    return opt


def with_no_new_privs(on: bool = True) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["process"]["noNewPrivileges"] = on

    return opt


def with_readonly_rootfs(on: bool = True) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["root"]["readonly"] = on

    return opt


def with_masked_paths(paths: Iterable[str]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        _linux(spec)["maskedPaths"] = list(paths)

    return opt


def with_readonly_paths(paths: Iterable[str]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        _linux(spec)["readonlyPaths"] = list(paths)

    return opt


def with_mounts(mounts: Iterable[dict[str, Any]]) -> SpecOpt:
    """Add mounts; one at a destination already mounted replaces the old one there.

    A user mount over /dev/shm or /etc/hosts must win over the default.
    """

    def opt(spec: Spec) -> None:
        new = list(mounts)
        dests = {m["destination"] for m in new}
        spec["mounts"] = [m for m in spec.get("mounts", []) if m["destination"] not in dests] + new

    return opt


def with_namespace(kind: str, path: str | None = None) -> SpecOpt:
    """Create (path None) or join (path given) a namespace of `kind`."""
    if kind not in NAMESPACE_KINDS:
        raise ValueError(f"unknown namespace kind {kind!r}")

    def opt(spec: Spec) -> None:
        nss = [n for n in _linux(spec).get("namespaces", []) if n["type"] != kind]
        entry = {"type": kind}
        if path:
            entry["path"] = path
        nss.append(entry)
        _linux(spec)["namespaces"] = nss

    return opt


def without_namespace(kind: str) -> SpecOpt:
    """Use the host's namespace of `kind`."""

    def opt(spec: Spec) -> None:
        linux = _linux(spec)
        linux["namespaces"] = [n for n in linux.get("namespaces", []) if n["type"] != kind]

    return opt


def with_userns(uid_maps: Sequence[IdMapping], gid_maps: Sequence[IdMapping], path: str | None = None) -> SpecOpt:
    def opt(spec: Spec) -> None:
        with_namespace("user", path)(spec)
        _linux(spec)["uidMappings"] = [m.to_spec() for m in uid_maps]
        _linux(spec)["gidMappings"] = [m.to_spec() for m in gid_maps]

    return opt


def with_sysctls(sysctls: Mapping[str, str]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        if sysctls:
            _linux(spec).setdefault("sysctl", {}).update(sysctls)

    return opt


def resources_to_spec(r: Resources) -> dict[str, Any]:
    """An OCI linux.resources object (also the JSON `runc update` reads)."""
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    mem: dict[str, Any] = {}
    if r.memory_limit:
        mem["limit"] = r.memory_limit
        # Without an explicit swap limit, no swap beyond the memory limit,
        # as the kubelet expects for its memory accounting.
        mem["swap"] = r.memory_swap or r.memory_limit
    elif r.memory_swap:
        mem["swap"] = r.memory_swap
    if mem:
        out["memory"] = mem
    if r.hugepage_limits:
        out["hugepageLimits"] = [_hugepage(h) for h in r.hugepage_limits]
    if r.unified:
        out["unified"] = dict(r.unified)
    if r.pids_limit:
        out["pids"] = {"limit": r.pids_limit}
    return out


def _hugepage(h: HugepageLimit) -> dict[str, Any]:
    return {"pageSize": h.page_size, "limit": h.limit}


def with_resources(r: Resources) -> SpecOpt:
    def opt(spec: Spec) -> None:
        res = _linux(spec).setdefault("resources", {})
        res.update(resources_to_spec(r))

    return opt


def with_oom_score_adj(value: int | None) -> SpecOpt:
    def opt(spec: Spec) -> None:
        if value is None:
            spec["process"].pop("oomScoreAdj", None)
        else:
            spec["process"]["oomScoreAdj"] = value

    return opt


# Under the systemd driver (cgroupsPath "slice:prefix:name") the runtime asks systemd for a
# transient scope per container; these annotations shape that scope (runc and crun read both
# forms: `org.systemd.property.NAME` as a unit property in GVariant text, the crun key as is).
SYSTEMD_SCOPE_ANNOTATIONS = {
    # A scope that ends failed (an OOM kill under newer systemd, a stop timeout) is unloaded
    # like a clean one; without this it stays listed as failed until `systemctl reset-failed`.
    "org.systemd.property.CollectMode": "'inactive-or-failed'",
    # crun puts the process in a `container` child of the scope by default; without it the
    # container's cgroup is the scope its cgroupsPath names, as with runc, and its limits,
    # stats and memory.events sit where the daemon reads them.
    "run.oci.systemd.subgroup": "",
}


def is_systemd_cgroups_path(path: str) -> bool:
    return path.count(":") == 2


def with_cgroups_path(path: str) -> SpecOpt:
    """linux.cgroupsPath; a systemd one ("slice:prefix:name") also gets SYSTEMD_SCOPE_ANNOTATIONS."""

    def opt(spec: Spec) -> None:
        if path:
            _linux(spec)["cgroupsPath"] = path
            if is_systemd_cgroups_path(path):
                annotations = spec.setdefault("annotations", {})
                for key, value in SYSTEMD_SCOPE_ANNOTATIONS.items():
                    annotations.setdefault(key, value)

    return opt


def with_seccomp(profile: dict[str, Any] | None) -> SpecOpt:
    """Set linux.seccomp; None means unconfined."""

    def opt(spec: Spec) -> None:
        if profile is None:
            _linux(spec).pop("seccomp", None)
        else:
            _linux(spec)["seccomp"] = profile

    return opt


def with_apparmor(profile: str | None) -> SpecOpt:
    def opt(spec: Spec) -> None:
        if profile:
            spec["process"]["apparmorProfile"] = profile
        else:
            spec["process"].pop("apparmorProfile", None)

    return opt


def with_devices(devices: Iterable[dict[str, Any]], rules: Iterable[dict[str, Any]] = ()) -> SpecOpt:
    """Add device nodes and their cgroup allow rules (a node at an existing path replaces it)."""

    def opt(spec: Spec) -> None:
        linux = _linux(spec)
        new = list(devices)
        paths = {d["path"] for d in new}
        linux["devices"] = [d for d in linux.get("devices", []) if d["path"] not in paths] + new
        linux.setdefault("resources", {}).setdefault("devices", []).extend(rules)

    return opt


# Annotation prefixes that runc, crun or systemd read as configuration: unit properties of
# the container's scope, crun's own knobs (seccomp notify, subgroups, kept groups). A pod's
# annotations are the kubelet user's free text, so they never reach the runtime under these.
RUNTIME_ANNOTATION_PREFIXES = ("org.systemd.property.", "run.oci.", "io.crun.")


def with_annotations(annotations: Mapping[str, str]) -> SpecOpt:
    """CRI annotations into the spec, less those the runtime would obey (see above)."""

    def opt(spec: Spec) -> None:
        kept = {k: v for k, v in annotations.items() if not k.startswith(RUNTIME_ANNOTATION_PREFIXES)}
        if kept:
            spec.setdefault("annotations", {}).update(kept)

    return opt


def with_rlimits(rlimits: Iterable[tuple[str, int, int]]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        new = {name: {"type": name, "soft": soft, "hard": hard} for name, soft, hard in rlimits}
        old = [r for r in spec["process"].get("rlimits", []) if r["type"] not in new]
        spec["process"]["rlimits"] = old + list(new.values())

    return opt


def with_tty(on: bool = True) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["process"]["terminal"] = on

    return opt


def with_shm(source: str) -> SpecOpt:
    """/dev/shm from a per-pod mount (a bind), or a private tmpfs when `source` is empty."""
    if source:
        mount = {"destination": "/dev/shm", "type": "bind", "source": source,
                 "options": ["rbind", "nosuid", "nodev", "noexec", "rprivate"]}  # fmt: skip
    else:
        mount = {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}  # fmt: skip
    return with_mounts([mount])


def with_privileged() -> SpecOpt:
    """What `privileged` changes besides capabilities and devices (set by the builder).

    No masked or read-only paths, /sys and the cgroup tree writable, no
    seccomp or AppArmor confinement.
    """

    def opt(spec: Spec) -> None:
        linux = _linux(spec)
        linux["maskedPaths"] = []
        linux["readonlyPaths"] = []
        linux.pop("seccomp", None)
        spec["process"].pop("apparmorProfile", None)
        for m in spec.get("mounts", []):
            if m["destination"] in ("/sys", "/sys/fs/cgroup"):
                m["options"] = [o for o in m.get("options", []) if o != "ro"] + ["rw"]

    return opt
