"""CDI devices (KEP-4009): finding the devices a container asks for, and editing its OCI spec.

A CDI spec file (JSON or YAML; cdi_spec.py reads one) in one of the spec dirs
names a kind (`vendor.com/class`) and its devices; a container asks for
`vendor.com/class=name` through the CRI `CDI_devices` field or a
`cdi.k8s.io/<key>` annotation. Each device carries containerEdits (env,
device nodes, mounts, hooks, extra groups), and the spec may carry edits
shared by all its devices: those are applied once, when any of its devices
is asked for.

Resolving reads files and stats host device nodes, so it belongs in a worker
thread; applying is a pure edit of an OCI spec dict. A spec file that cannot be
used is skipped, and its error is shown when one of its devices is asked for.

Dirs listed later win: a device defined in /var/run/cdi (generated at run
time) overrides the same name in /etc/cdi; two definitions in one dir are a
conflict and neither is used.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .cdi_spec import (
    CLASS_NAME,
    DEVICE_NAME,
    VENDOR_NAME,
    CdiEdits,
    CdiHook,
    CdiMount,
    CdiSpec,
    DeviceNode,
    load_spec_file,
)
from .errors import InvalidArgument

DEFAULT_SPEC_DIRS: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
ANNOTATION_PREFIX = "cdi.k8s.io/"
SPEC_EXTENSIONS = (".json", ".yaml")


# ---------------------------------------------------------------- names


def parse_device_name(name: str) -> tuple[str, str, str]:
    """`vendor.com/class=dev` -> (vendor.com, class, dev); InvalidArgument otherwise."""
    kind, sep, dev = name.partition("=")
    vendor, slash, cls = kind.partition("/")
    if not sep or not slash:
        raise InvalidArgument(f"CDI device {name!r} is not a fully-qualified name: use vendor.com/class=name")
    if not VENDOR_NAME.match(vendor):
        raise InvalidArgument(f"CDI device {name!r}: invalid vendor {vendor!r}")
    if not CLASS_NAME.match(cls) or len(cls) > 63:
        raise InvalidArgument(f"CDI device {name!r}: invalid class {cls!r}")
    if not DEVICE_NAME.match(dev):
        raise InvalidArgument(f"CDI device {name!r}: invalid device name {dev!r}")
    return vendor, cls, dev


def names_from_annotations(annotations: Mapping[str, str]) -> list[str]:
    """Device names from `cdi.k8s.io/<key>` annotations (comma-separated values), in key order."""
    out: list[str] = []
    for key in sorted(annotations):
        if key.startswith(ANNOTATION_PREFIX):
            out.extend(n.strip() for n in annotations[key].split(",") if n.strip())
    return out


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
