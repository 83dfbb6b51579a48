"""CDI spec files (KEP-4009): what they may say, and the strict parse of one.

Spec versions 0.3.0 to 1.0.0 are read (1.0.0 changed no field). A file that
uses a field newer than the version it declares, has an unknown field, or is
otherwise malformed is refused with an InvalidArgument naming the file and the
field; cdi.py then skips it and shows the error when one of its devices is
asked for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidArgument

SUPPORTED_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0")
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")

# Name rules from the CDI spec: vendor is a DNS-like prefix; class and device
# names start and end alphanumeric. ':' appears in real device names (MIG
# slices such as `0:1`), and the reference parser accepts it.
VENDOR_NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
CLASS_NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
DEVICE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._:-]*[A-Za-z0-9])?$")
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
    nodes = [_parse_node(d, f"{where}.deviceNodes[{i}]", needs) for i, d in enumerate(_list(obj, "deviceNodes"))]
    mounts = [_parse_mount(m, f"{where}.mounts[{i}]", needs) for i, m in enumerate(_list(obj, "mounts"))]
    hooks = [_parse_hook(h, f"{where}.hooks[{i}]") for i, h in enumerate(_list(obj, "hooks"))]
    gids = obj.get("additionalGids") or []
    if not isinstance(gids, list) or not all(_is_uint32(g) for g in gids):
        raise InvalidArgument(f"{where}.additionalGids: expected a list of uint32")
    if gids:
        needs.need("0.7.0", f"{where}.additionalGids")
    rdt = obj.get("intelRdt")
    if rdt is not None:
        rdt_keys = ("closID", "l3CacheSchema", "memBwSchema", "enableCMT", "enableMBM")
        rdt = _check_keys(rdt, rdt_keys, f"{where}.intelRdt")
        needs.need("0.7.0", f"{where}.intelRdt")
    return CdiEdits(
        env=env,
        device_nodes=tuple(nodes),
        mounts=tuple(mounts),
        hooks=tuple(hooks),
        additional_gids=tuple(gids),
        intel_rdt=dict(rdt) if rdt is not None else None,
    )


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    return list(obj.get(key) or [])


def _parse_node(raw: Any, where: str, needs: _Needs) -> DeviceNode:
    d = _check_keys(raw, _NODE_KEYS, where)
    node = DeviceNode(
        path=_str(d, "path", where, required=True),
        host_path=_str(d, "hostPath", where),
        type=_str(d, "type", where),
        major=_int(d, "major", where),
        minor=_int(d, "minor", where),
        file_mode=_int(d, "fileMode", where),
        permissions=_str(d, "permissions", where),
        uid=_int(d, "uid", where),
        gid=_int(d, "gid", where),
    )
    if node.host_path:
        needs.need("0.5.0", f"{where}.hostPath")
    if node.type and node.type not in _DEVICE_TYPES:
        raise InvalidArgument(f"{where}.type {node.type!r} must be one of b, c, u, p")
    if node.permissions not in ("", "none") and set(node.permissions) - set("rwm"):
        raise InvalidArgument(f"{where}.permissions {node.permissions!r} must be r, w, m or 'none'")
    if not node.path.startswith("/"):
        raise InvalidArgument(f"{where}.path {node.path!r} must be absolute")
    return node


def _parse_mount(raw: Any, where: str, needs: _Needs) -> CdiMount:
    m = _check_keys(raw, ("hostPath", "containerPath", "type", "options"), where)
    mount = CdiMount(
        host_path=_str(m, "hostPath", where, required=True),
        container_path=_str(m, "containerPath", where, required=True),
        type=_str(m, "type", where),
        options=_strs(m, "options", where),
    )
    if mount.type:
        needs.need("0.4.0", f"{where}.type")
    return mount


def _parse_hook(raw: Any, where: str) -> CdiHook:
    h = _check_keys(raw, ("hookName", "path", "args", "env", "timeout"), where)
    hook = CdiHook(
        hook_name=_str(h, "hookName", where, required=True),
        path=_str(h, "path", where, required=True),
        args=_strs(h, "args", where),
        env=_env(_strs(h, "env", where), f"{where}.env"),
        timeout=_int(h, "timeout", where),
    )
    if hook.hook_name not in HOOK_NAMES:
        raise InvalidArgument(f"{where}.hookName {hook.hook_name!r} must be one of {', '.join(HOOK_NAMES)}")
    if not hook.path.startswith("/"):
        raise InvalidArgument(f"{where}.path {hook.path!r} must be absolute")
    if hook.timeout is not None and hook.timeout <= 0:
        raise InvalidArgument(f"{where}.timeout must be greater than zero")
    return hook


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
    if not VENDOR_NAME.match(vendor) or not CLASS_NAME.match(cls) or len(cls) > 63:
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
        if not DEVICE_NAME.match(name):
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
