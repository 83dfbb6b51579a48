"""CDI devices (KEP-4009): vendor spec files that describe how to expose a device.

A CDI spec file (JSON or YAML) in one of the spec dirs names a kind
(`vendor.com/class`) and its devices; a container asks for
`vendor.com/class=name` through the CRI `CDI_devices` field or a
`cdi.k8s.io/<key>` annotation. Each device carries containerEdits (env,
device nodes, mounts, hooks, extra groups), and the spec may carry edits
shared by all its devices: those are applied once, when any of its devices
is asked for.

Resolving reads files and stats host device nodes, so it belongs in a worker
thread; applying is a pure edit of an OCI spec dict. Spec versions 0.3.0 to
1.0.0 are read (1.0.0 changed no field); a file that uses a field newer than
the version it declares, has an unknown field, or is otherwise malformed is
skipped, and its error is shown when one of its devices is asked for.

Dirs listed later win: a device defined in /var/run/cdi (generated at run
time) overrides the same name in /etc/cdi; two definitions in one dir are a
conflict and neither is used.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import InvalidArgument

DEFAULT_SPEC_DIRS: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
ANNOTATION_PREFIX = "cdi.k8s.io/"

SUPPORTED_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0")
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
SPEC_EXTENSIONS = (".json", ".yaml")

# Name rules from the CDI spec: vendor is a DNS-like prefix; class and device
# names start and end alphanumeric. ':' appears in real device names (MIG
# slices such as `0:1`), and the reference parser accepts it.
_VENDOR = re.compile(r"^[A-Za-z](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_CLASS = re.compile(r"^[A-Za-z](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_DEVICE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._:-]*[A-Za-z0-9])?$")
_DEVICE_TYPES = ("b", "c", "u", "p")
_NODE_KEYS = ("path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid")


@dataclass(frozen=True, slots=True)
class DeviceNode:
    path: str
    host_path: str = ""
    type: str = ""
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    permissions: str = ""
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class CdiMount:
    host_path: str
    container_path: str
    type: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CdiHook:
    hook_name: str
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@dataclass(frozen=True, slots=True)
class CdiEdits:
    """Everything to change in a container's OCI spec for its CDI devices."""

    devices: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[CdiMount, ...] = ()
    hooks: tuple[CdiHook, ...] = ()
    additional_gids: tuple[int, ...] = ()
    intel_rdt: Mapping[str, Any] | None = None

    def __add__(self, other: CdiEdits) -> CdiEdits:
        return CdiEdits(
            devices=self.devices + other.devices,
            env=self.env + other.env,
            device_nodes=self.device_nodes + other.device_nodes,
            mounts=self.mounts + other.mounts,
            hooks=self.hooks + other.hooks,
            additional_gids=self.additional_gids + other.additional_gids,
            intel_rdt=other.intel_rdt if other.intel_rdt is not None else self.intel_rdt,
        )

    @property
    def empty(self) -> bool:
        return not (
            self.env
            or self.device_nodes
            or self.mounts
            or self.hooks
            or self.additional_gids
            or self.intel_rdt is not None
        )


@dataclass(frozen=True, slots=True)
class CdiSpec:
    path: Path
    priority: int
    kind: str
    version: str
    edits: CdiEdits
    devices: Mapping[str, CdiEdits] = field(default_factory=dict)


# ---------------------------------------------------------------- names


def parse_device_name(name: str) -> tuple[str, str, str]:
    """`vendor.com/class=dev` -> (vendor.com, class, dev); InvalidArgument otherwise."""
    kind, sep, dev = name.partition("=")
    vendor, slash, cls = kind.partition("/")
    if not sep or not slash:
        raise InvalidArgument(f"CDI device {name!r} is not a fully-qualified name: use vendor.com/class=name")
    if not _VENDOR.match(vendor):
        raise InvalidArgument(f"CDI device {name!r}: invalid vendor {vendor!r}")
    if not _CLASS.match(cls) or len(cls) > 63:
        raise InvalidArgument(f"CDI device {name!r}: invalid class {cls!r}")
    if not _DEVICE.match(dev):
        raise InvalidArgument(f"CDI device {name!r}: invalid device name {dev!r}")
    return vendor, cls, dev


def names_from_annotations(annotations: Mapping[str, str]) -> list[str]:
    """Device names from `cdi.k8s.io/<key>` annotations (comma-separated values), in key order."""
    out: list[str] = []
    for key in sorted(annotations):
        if key.startswith(ANNOTATION_PREFIX):
            out.extend(n.strip() for n in annotations[key].split(",") if n.strip())
    return out


# ---------------------------------------------------------------- loading


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def _check_keys(obj: Any, allowed: Iterable[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where}: expected an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise InvalidArgument(f"{where}: unknown field(s) {', '.join(unknown)}")
    return obj


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = obj.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}.{key}: expected a string, got {value!r}")
    if required and not value:
        raise InvalidArgument(f"{where}.{key} is required")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{where}.{key}: expected an integer, got {value!r}")
    return value


def _strs(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{where}.{key}: expected a list of strings")
    return tuple(value)


class _Needs:
    """The lowest spec version whose fields a file uses."""

    def __init__(self) -> None:
        self.version = "0.3.0"
        self.why = ""

    def need(self, version: str, why: str) -> None:
        if _version_key(version) > _version_key(self.version):
            self.version, self.why = version, why


def _is_uint32(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


def _env(entries: tuple[str, ...], where: str) -> tuple[str, ...]:
    for e in entries:
        if "=" not in e or e.startswith("="):
            raise InvalidArgument(f"{where}: env entry {e!r} is not NAME=VALUE")
    return entries


def _parse_edits(raw: Any, where: str, needs: _Needs) -> CdiEdits:
    if raw is None:
        return CdiEdits()
    obj = _check_keys(raw, ("env", "deviceNodes", "mounts", "hooks", "intelRdt", "additionalGids"), where)
    env = _env(_strs(obj, "env", where), f"{where}.env")
    nodes: list[DeviceNode] = []
    for i, d in enumerate(obj.get("deviceNodes") or []):
        w = f"{where}.deviceNodes[{i}]"
        d = _check_keys(d, _NODE_KEYS, w)
        node = DeviceNode(
            path=_str(d, "path", w, required=True),
            host_path=_str(d, "hostPath", w),
            type=_str(d, "type", w),
            major=_int(d, "major", w),
            minor=_int(d, "minor", w),
            file_mode=_int(d, "fileMode", w),
            permissions=_str(d, "permissions", w),
            uid=_int(d, "uid", w),
            gid=_int(d, "gid", w),
        )
        if node.host_path:
            needs.need("0.5.0", f"{w}.hostPath")
        if node.type and node.type not in _DEVICE_TYPES:
            raise InvalidArgument(f"{w}.type {node.type!r} must be one of b, c, u, p")
        if node.permissions not in ("", "none") and set(node.permissions) - set("rwm"):
            raise InvalidArgument(f"{w}.permissions {node.permissions!r} must be r, w, m or 'none'")
        if not node.path.startswith("/"):
            raise InvalidArgument(f"{w}.path {node.path!r} must be absolute")
        nodes.append(node)
    mounts: list[CdiMount] = []
    for i, m in enumerate(obj.get("mounts") or []):
        w = f"{where}.mounts[{i}]"
        m = _check_keys(m, ("hostPath", "containerPath", "type", "options"), w)
        mount = CdiMount(
            host_path=_str(m, "hostPath", w, required=True),
            container_path=_str(m, "containerPath", w, required=True),
            type=_str(m, "type", w),
            options=_strs(m, "options", w),
        )
        if mount.type:
            needs.need("0.4.0", f"{w}.type")
        mounts.append(mount)
    hooks: list[CdiHook] = []
    for i, h in enumerate(obj.get("hooks") or []):
        w = f"{where}.hooks[{i}]"
        h = _check_keys(h, ("hookName", "path", "args", "env", "timeout"), w)
        hook = CdiHook(
            hook_name=_str(h, "hookName", w, required=True),
            path=_str(h, "path", w, required=True),
            args=_strs(h, "args", w),
            env=_env(_strs(h, "env", w), f"{w}.env"),
            timeout=_int(h, "timeout", w),
        )
        if hook.hook_name not in HOOK_NAMES:
            raise InvalidArgument(f"{w}.hookName {hook.hook_name!r} must be one of {', '.join(HOOK_NAMES)}")
        if not hook.path.startswith("/"):
            raise InvalidArgument(f"{w}.path {hook.path!r} must be absolute")
        if hook.timeout is not None and hook.timeout <= 0:
            raise InvalidArgument(f"{w}.timeout must be greater than zero")
        hooks.append(hook)
    gids_raw = obj.get("additionalGids") or []
    if not isinstance(gids_raw, list) or not all(_is_uint32(g) for g in gids_raw):
        raise InvalidArgument(f"{where}.additionalGids: expected a list of uint32")
    if gids_raw:
        needs.need("0.7.0", f"{where}.additionalGids")
    rdt = obj.get("intelRdt")
    if rdt is not None:
        rdt = _check_keys(
            rdt, ("closID", "l3CacheSchema", "memBwSchema", "enableCMT", "enableMBM"), f"{where}.intelRdt"
        )
        needs.need("0.7.0", f"{where}.intelRdt")
    return CdiEdits(
        env=env,
        device_nodes=tuple(nodes),
        mounts=tuple(mounts),
        hooks=tuple(hooks),
        additional_gids=tuple(gids_raw),
        intel_rdt=dict(rdt) if rdt is not None else None,
    )


def parse_spec(data: Any, path: Path, priority: int = 0) -> CdiSpec:
    """One spec file's parsed content; InvalidArgument naming the file and field on any error."""
    where = str(path)
    obj = _check_keys(data, ("cdiVersion", "kind", "annotations", "devices", "containerEdits"), where)
    version = _str(obj, "cdiVersion", where, required=True)
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(SUPPORTED_VERSIONS)
        raise InvalidArgument(f"{where}: cdiVersion {version!r} is not supported ({supported})")
    needs = _Needs()
    kind = _str(obj, "kind", where, required=True)
    vendor, _, cls = kind.partition("/")
    if not _VENDOR.match(vendor) or not _CLASS.match(cls) or len(cls) > 63:
        raise InvalidArgument(f"{where}: kind {kind!r} must be vendor.com/class")
    if "." in cls:
        needs.need("0.6.0", "a '.' in the kind's class")
    if obj.get("annotations"):
        needs.need("0.6.0", "annotations")
    edits = _parse_edits(obj.get("containerEdits"), f"{where}: containerEdits", needs)
    raw_devices = obj.get("devices")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise InvalidArgument(f"{where}: devices must list at least one device")
    devices: dict[str, CdiEdits] = {}
    for i, d in enumerate(raw_devices):
        w = f"{where}: devices[{i}]"
        d = _check_keys(d, ("name", "annotations", "containerEdits"), w)
        name = _str(d, "name", w, required=True)
        if not _DEVICE.match(name):
            raise InvalidArgument(f"{w}: invalid device name {name!r}")
        if name[0].isdigit():
            needs.need("0.5.0", f"device name {name!r} starting with a digit")
        if d.get("annotations"):
            needs.need("0.6.0", f"{w}.annotations")
        if name in devices:
            raise InvalidArgument(f"{w}: device {name!r} is defined twice")
        dev_edits = _parse_edits(d.get("containerEdits"), f"{w}.containerEdits", needs)
        if dev_edits.empty:
            raise InvalidArgument(f"{w}: device {name!r} has no containerEdits")
        devices[name] = dev_edits
    if _version_key(needs.version) > _version_key(version):
        raise InvalidArgument(
            f"{where}: {needs.why} needs cdiVersion {needs.version} or later, but the file declares {version}"
        )
    return CdiSpec(path=path, priority=priority, kind=kind, version=version, edits=edits, devices=devices)


def load_spec_file(path: Path, priority: int = 0) -> CdiSpec:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read: {exc.strerror}") from exc
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument(f"{path}: not valid JSON: {exc}") from exc
    else:
        # Imported only when a YAML spec exists: most nodes have none.
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"{path}: not valid YAML: {exc}") from exc
    return parse_spec(data, path, priority)


@dataclass(slots=True)
class _Registry:
    devices: dict[str, tuple[CdiSpec, CdiEdits]] = field(default_factory=dict)
    conflicts: dict[str, list[Path]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)  # kind (or "") -> messages
    files: int = 0


def _scan(spec_dirs: Sequence[Path]) -> _Registry:
    reg = _Registry()
    for priority, directory in enumerate(spec_dirs):
        try:
            entries = sorted(p for p in Path(directory).iterdir() if p.suffix in SPEC_EXTENSIONS)
        except OSError:
            continue  # a missing spec dir is normal: no vendor installed anything there
        for path in entries:
            if not path.is_file():
                continue
            reg.files += 1
            try:
                spec = load_spec_file(path, priority)
            except InvalidArgument as exc:
                kind = _kind_hint(path)
                reg.errors.setdefault(kind, []).append(str(exc))
                continue
            for name, edits in spec.devices.items():
                qualified = f"{spec.kind}={name}"
                old = reg.devices.get(qualified)
                if old is not None and old[0].priority == priority:
                    reg.conflicts.setdefault(qualified, [old[0].path]).append(path)
                    continue
                reg.conflicts.pop(qualified, None)
                reg.devices[qualified] = (spec, edits)
    for name in reg.conflicts:
        reg.devices.pop(name, None)
    return reg


def _kind_hint(path: Path) -> str:
    """The kind a broken file declares, if it can be read at all (for the error message)."""
    try:
        match = re.search(r"""["']?kind["']?\s*:\s*["']?([^"',\s}]+)""", path.read_text())
    except OSError:
        return ""
    return match.group(1) if match else ""


# ---------------------------------------------------------------- resolving


def _host_info(node: DeviceNode, where: str) -> DeviceNode:
    """Type, major, minor and file mode from the host node: the CDI spec lets vendors omit them."""
    host = node.host_path or node.path
    minimal = bool(node.type) and (node.major is not None or node.type == "p")
    try:
        st = os.stat(host)
    except OSError as exc:
        if minimal:
            return replace(node, host_path=host)
        raise InvalidArgument(f"{where}: host device {host} cannot be used: {exc.strerror}") from exc
    mode = st.st_mode
    kind = "c" if stat.S_ISCHR(mode) else "b" if stat.S_ISBLK(mode) else "p" if stat.S_ISFIFO(mode) else ""
    file_mode = node.file_mode if node.file_mode is not None else stat.S_IMODE(mode)
    if minimal:
        return replace(node, host_path=host, file_mode=file_mode)
    if not kind:
        raise InvalidArgument(f"{where}: {host} is not a device node")
    if node.type and node.type != kind and not (node.type == "u" and kind == "c"):
        raise InvalidArgument(f"{where}: type {node.type!r} does not match the host node {host} ({kind!r})")
    node = replace(node, host_path=host, type=node.type or kind, file_mode=file_mode)
    if node.type == "p":
        return node
    return replace(
        node,
        major=os.major(st.st_rdev) if node.major is None else node.major,
        minor=os.minor(st.st_rdev) if node.minor is None else node.minor,
    )


def _with_host_info(edits: CdiEdits, where: str) -> CdiEdits:
    if not edits.device_nodes:
        return edits
    return replace(edits, device_nodes=tuple(_host_info(n, f"{where}: {n.path}") for n in edits.device_nodes))


def resolve_cdi_devices(names: Sequence[str], spec_dirs: Sequence[Path | str] = DEFAULT_SPEC_DIRS) -> CdiEdits:
    """The combined edits for `names` (duplicates ignored), read from `spec_dirs`.

    Blocking (reads files, stats host nodes): run it in a worker thread.
    Spec-level edits come once per spec file, before its first device's own.
    """
    wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not wanted:
        return CdiEdits()
    for name in wanted:
        parse_device_name(name)
    dirs = [Path(d) for d in spec_dirs]
    reg = _scan(dirs)
    out = CdiEdits()
    seen_specs: set[Path] = set()
    for name in wanted:
        found = reg.devices.get(name)
        if found is None:
            raise InvalidArgument(_unresolved(name, dirs, reg))
        spec, edits = found
        if spec.path not in seen_specs:
            seen_specs.add(spec.path)
            out = out + _with_host_info(spec.edits, f"CDI spec {spec.path}")
        out = out + _with_host_info(edits, f"CDI device {name}")
        out = replace(out, devices=out.devices + (name,))
    return out


def _unresolved(name: str, dirs: list[Path], reg: _Registry) -> str:
    searched = ", ".join(str(d) for d in dirs) or "no directories"
    if name in reg.conflicts:
        files = ", ".join(str(p) for p in reg.conflicts[name])
        return f"CDI device {name!r} is defined more than once in the same spec dir ({files}); remove one"
    kind = name.partition("=")[0]
    msg = f"unresolvable CDI device {name!r}: no spec file in {searched} defines it"
    same_kind = sorted(n.partition("=")[2] for n in reg.devices if n.partition("=")[0] == kind)
    if same_kind:
        msg += f" (kind {kind} has: {', '.join(same_kind)})"
    problems = reg.errors.get(kind, []) + reg.errors.get("", [])
    if problems:
        msg += "; spec files that could not be used: " + "; ".join(problems)
    return msg


# ---------------------------------------------------------------- applying


def _set_env(process: dict[str, Any], entries: Iterable[str]) -> None:
    merged: dict[str, str] = {}
    for entry in [*process.get("env", []), *entries]:
        merged[entry.split("=", 1)[0]] = entry
    process["env"] = list(merged.values())


def _oci_device(node: DeviceNode, user: Mapping[str, Any]) -> dict[str, Any]:
    dev: dict[str, Any] = {"path": node.path, "type": node.type}
    if node.major is not None:
        dev["major"] = node.major
    if node.minor is not None:
        dev["minor"] = node.minor
    if node.file_mode is not None:
        dev["fileMode"] = node.file_mode
    # A node the vendor gave no owner is owned by the container's user, so a
    # non-root process can open it (what other CDI consumers do too).
    uid = node.uid if node.uid is not None else (user.get("uid") or None)
    gid = node.gid if node.gid is not None else (user.get("gid") or None)
    if uid is not None:
        dev["uid"] = uid
    if gid is not None:
        dev["gid"] = gid
    return dev


def _oci_mount(m: CdiMount) -> dict[str, Any]:
    mount: dict[str, Any] = {"destination": m.container_path, "source": m.host_path}
    mount_type = m.type or ("bind" if {"bind", "rbind"} & set(m.options) else "")
    if mount_type:
        mount["type"] = mount_type
    if m.options:
        mount["options"] = list(m.options)
    return mount


def _depth(destination: str) -> int:
    return len([p for p in os.path.normpath(destination).split("/") if p])


def _oci_hook(h: CdiHook) -> dict[str, Any]:
    hook: dict[str, Any] = {"path": h.path}
    if h.args:
        hook["args"] = list(h.args)
    if h.env:
        hook["env"] = list(h.env)
    if h.timeout is not None:
        hook["timeout"] = h.timeout
    return hook


def apply_cdi_edits(spec: dict[str, Any], edits: CdiEdits) -> None:
    """Apply resolved CDI edits to an OCI spec dict, in place (no I/O)."""
    if edits.empty:
        return
    process = spec.setdefault("process", {})
    user = process.setdefault("user", {"uid": 0, "gid": 0})
    if edits.env:
        _set_env(process, edits.env)
    if edits.device_nodes:
        linux = spec.setdefault("linux", {})
        rules = linux.setdefault("resources", {}).setdefault("devices", [])
        for node in edits.device_nodes:
            dev = _oci_device(node, user)
            linux["devices"] = [d for d in linux.get("devices", []) if d.get("path") != node.path] + [dev]
            access = "rwm" if not node.permissions else "" if node.permissions == "none" else node.permissions
            # 'none' asks for no cgroup access at all: with default-deny, that is no allow rule.
            if node.type in ("b", "c") and access:
                rules.append(
                    {
                        "allow": True,
                        "type": node.type,
                        "major": dev.get("major"),
                        "minor": dev.get("minor"),
                        "access": access,
                    }
                )
    if edits.mounts:
        new = [_oci_mount(m) for m in edits.mounts]
        dests = {m["destination"] for m in new}
        mounts = [m for m in spec.get("mounts", []) if m.get("destination") not in dests] + new
        # Parents before children, otherwise a later mount would hide an earlier one
        # below it; sorted() is stable, so equal depths keep their order.
        spec["mounts"] = sorted(mounts, key=lambda m: _depth(m.get("destination", "/")))
    if edits.hooks:
        hooks = spec.setdefault("hooks", {})
        for h in edits.hooks:
            hooks.setdefault(h.hook_name, []).append(_oci_hook(h))
    if edits.additional_gids:
        gids = list(user.get("additionalGids", []))
        for gid in edits.additional_gids:
            if gid and gid not in gids:
                gids.append(gid)
        if gids:
            user["additionalGids"] = gids
    if edits.intel_rdt is not None:
        spec.setdefault("linux", {})["intelRdt"] = dict(edits.intel_rdt)
