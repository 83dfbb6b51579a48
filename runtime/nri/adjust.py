"""Container adjustments: merged from the plugins in index order, then applied to the OCI spec.

Each adjusted item (an annotation, a mount's destination, an environment
variable, an rlimit, a device, a resource value, the OOM score, ...) may be
set by one plugin only; a second plugin touching it is a conflict that fails
CreateContainer naming both, as NRI specifies. A key prefixed with "-"
removes the item (annotations, mounts, environment, devices, sysctls,
namespaces, net devices). Hooks, CDI devices and device cgroup rules are
added, never conflicting.

A blockio class is refused (naming the plugin): a class stands for a set of
block I/O weights and throttles that the node defines, and this node defines
none, so honouring the name is impossible and ignoring it would hide that.
An RDT class needs no such definition: it is the resctrl group, written as the
OCI spec's linux.intelRdt.closID, the same field LinuxRdt.clos_id sets, so the
two conflict with each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crishim.runtime.nri import linux_spec, nri_pb2
from crishim.runtime.nri.messages import HOOK_FIELDS
from crishim.runtime.nri.plugin import PluginError

REMOVE = "-"
# Scalar resource values: (NRI message, NRI field, OCI section, OCI key).
RESOURCE_VALUES = (
    ("memory", "limit", "memory", "limit"),
    ("memory", "reservation", "memory", "reservation"),
    ("memory", "swap", "memory", "swap"),
    ("memory", "swappiness", "memory", "swappiness"),
    ("memory", "kernel", "memory", "kernel"),
    ("memory", "kernel_tcp", "memory", "kernelTCP"),
    ("memory", "disable_oom_killer", "memory", "disableOOMKiller"),
    ("memory", "use_hierarchy", "memory", "useHierarchy"),
    ("cpu", "shares", "cpu", "shares"),
    ("cpu", "quota", "cpu", "quota"),
    ("cpu", "period", "cpu", "period"),
    ("cpu", "realtime_runtime", "cpu", "realtimeRuntime"),
    ("cpu", "realtime_period", "cpu", "realtimePeriod"),
)


# Linux adjustments one plugin owns whole: (NRI field, the item a conflict names,
# Adjustment attribute, its OCI form).
LINUX_SINGLES: tuple[tuple[str, str, str, Callable[[Any], Any]], ...] = (
    ("io_priority", "I/O priority", "io_priority", linux_spec.io_priority),
    ("seccomp_policy", "seccomp policy", "seccomp", linux_spec.seccomp),
    ("scheduler", "scheduler", "scheduler", linux_spec.scheduler),
    ("memory_policy", "memory policy", "memory_policy", linux_spec.memory_policy),
)


class AdjustmentConflict(PluginError):
    """Two plugins adjusted the same item."""


class AdjustmentRefused(PluginError):
    """A plugin asked for something this node cannot provide."""


UNSET: Any = object()  # a single-valued item no plugin touched (None means "remove it")


@dataclass
class Adjustment:
    """Every plugin's adjustment of one container, merged; None/absent means untouched."""

    annotations: dict[str, str | None] = field(default_factory=dict)
    mounts: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    env: dict[str, str | None] = field(default_factory=dict)
    hooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rlimits: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, nri_pb2.LinuxDevice | None] = field(default_factory=dict)
    resources: dict[tuple[str, str], Any] = field(default_factory=dict)
    unified: dict[str, str] = field(default_factory=dict)
    hugepages: dict[str, int] = field(default_factory=dict)
    sysctl: dict[str, str | None] = field(default_factory=dict)
    oom_score_adj: int | None = None
    cgroups_path: str = ""
    io_priority: dict[str, Any] | None = UNSET
    seccomp: dict[str, Any] | None = UNSET
    scheduler: dict[str, Any] | None = UNSET
    memory_policy: dict[str, Any] | None = UNSET
    namespaces: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    net_devices: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    rdt: dict[str, Any] = field(default_factory=dict)
    rdt_removed: bool = False
    device_rules: list[dict[str, Any]] = field(default_factory=list)
    args: list[str] | None = None
    cdi_devices: list[str] = field(default_factory=list)
    owners: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.owners and not self.hooks and not self.cdi_devices and not self.device_rules

    def claim(self, item: str, plugin: str) -> None:
        owner = self.owners.setdefault(item, plugin)
        if owner != plugin:
            raise AdjustmentConflict(f"NRI plugins {owner} and {plugin} both adjust {item} of the container")


def collect_adjustments(replies: list[tuple[str, nri_pb2.CreateContainerResponse]]) -> Adjustment:
    """The plugins' adjustments, in the order given (index order), merged; a conflict raises."""
    merged = Adjustment()
    for plugin, reply in replies:
        if reply.HasField("adjust"):
            _merge(merged, reply.adjust, plugin)
    return merged


def _keyed(merged: Adjustment, target: dict[str, Any], kind: str, key: str, value: Any, plugin: str) -> None:
    removed = key.startswith(REMOVE)
    name = key.removeprefix(REMOVE)
    merged.claim(f"{kind} {name!r}", plugin)
    target[name] = None if removed else value


def _merge(merged: Adjustment, adjust: nri_pb2.ContainerAdjustment, plugin: str) -> None:
    for key, value in adjust.annotations.items():
        _keyed(merged, merged.annotations, "annotation", key, value, plugin)
    for mount in adjust.mounts:
        value = {"destination": mount.destination, "type": mount.type, "source": mount.source}
        value["options"] = list(mount.options)
        _keyed(merged, merged.mounts, "mount", mount.destination, value, plugin)
    for kv in adjust.env:
        _keyed(merged, merged.env, "environment variable", kv.key, kv.value, plugin)
    for spec_name, field_name in HOOK_FIELDS.items():
        for hook in getattr(adjust.hooks, field_name):
            entry: dict[str, Any] = {"path": hook.path, "args": list(hook.args), "env": list(hook.env)}
            if hook.HasField("timeout"):
                entry["timeout"] = hook.timeout.value
            merged.hooks.setdefault(spec_name, []).append(entry)
    for rlimit in adjust.rlimits:
        merged.claim(f"rlimit {rlimit.type}", plugin)
        merged.rlimits[rlimit.type] = {"type": rlimit.type, "hard": rlimit.hard, "soft": rlimit.soft}
    merged.cdi_devices.extend(d.name for d in adjust.CDI_devices)
    if adjust.args:
        merged.claim("args", plugin)
        merged.args = list(adjust.args)
    if adjust.HasField("linux"):
        _merge_linux(merged, adjust.linux, plugin)


def _merge_linux(merged: Adjustment, linux: nri_pb2.LinuxContainerAdjustment, plugin: str) -> None:
    for device in linux.devices:
        _keyed(merged, merged.devices, "device", device.path, device, plugin)
    for key, value in linux.sysctl.items():
        _keyed(merged, merged.sysctl, "sysctl", key, value, plugin)
    if linux.HasField("oom_score_adj"):
        merged.claim("OOM score", plugin)
        merged.oom_score_adj = linux.oom_score_adj.value
    if linux.cgroups_path:
        merged.claim("cgroups path", plugin)
        merged.cgroups_path = linux.cgroups_path
    for field_name, item, attr, to_oci in LINUX_SINGLES:
        if linux.HasField(field_name):
            merged.claim(item, plugin)
            setattr(merged, attr, to_oci(getattr(linux, field_name)))
    for ns in linux.namespaces:
        _keyed(merged, merged.namespaces, "namespace", ns.type, linux_spec.namespace(ns), plugin)
    for name, device in linux.net_devices.items():
        _keyed(merged, merged.net_devices, "net device", name, {"name": device.name}, plugin)
    if linux.HasField("rdt"):
        _merge_rdt(merged, linux.rdt, plugin)
    if linux.HasField("resources"):
        _merge_resources(merged, linux.resources, plugin)


def _merge_rdt(merged: Adjustment, rdt: nri_pb2.LinuxRdt, plugin: str) -> None:
    """LinuxRdt: removal claims all of intelRdt; otherwise each field is its own item."""
    if rdt.remove:
        for item in ("RDT class", "RDT schemata", "RDT monitoring"):
            merged.claim(item, plugin)
        merged.rdt_removed = True
    if rdt.HasField("clos_id"):
        _rdt_value(merged, "RDT class", "closID", rdt.clos_id.value, plugin)
    if rdt.HasField("schemata"):
        _rdt_value(merged, "RDT schemata", "schemata", list(rdt.schemata.value), plugin)
    if rdt.HasField("enable_monitoring"):
        _rdt_value(merged, "RDT monitoring", "enableMonitoring", rdt.enable_monitoring.value, plugin)


def _rdt_value(merged: Adjustment, item: str, key: str, value: Any, plugin: str) -> None:
    merged.claim(item, plugin)
    merged.rdt[key] = value


def _merge_resources(merged: Adjustment, resources: nri_pb2.LinuxResources, plugin: str) -> None:
    for section, name, _, _ in RESOURCE_VALUES:
        holder = getattr(resources, section)
        if holder.HasField(name):
            merged.claim(f"{section}.{name}", plugin)
            merged.resources[(section, name)] = getattr(holder, name).value
    for name in ("cpus", "mems"):
        if getattr(resources.cpu, name):
            merged.claim(f"cpu.{name}", plugin)
            merged.resources[("cpu", name)] = getattr(resources.cpu, name)
    if resources.HasField("pids"):
        merged.claim("pids.limit", plugin)
        merged.resources[("pids", "limit")] = resources.pids.limit
    for limit in resources.hugepage_limits:
        merged.claim(f"hugepage limit {limit.page_size}", plugin)
        merged.hugepages[limit.page_size] = limit.limit
    for key, value in resources.unified.items():
        merged.claim(f"unified {key}", plugin)
        merged.unified[key] = value
    merged.device_rules.extend(linux_spec.device_rule(rule) for rule in resources.devices)
    if resources.HasField("rdt_class"):
        name = resources.rdt_class.value
        if name:
            _rdt_value(merged, "RDT class", "closID", name, plugin)
        else:  # an empty class asks for none
            merged.claim("RDT class", plugin)
            merged.rdt.pop("closID", None)
            merged.rdt_removed = True
    if resources.HasField("blockio_class"):
        merged.claim("blockio class", plugin)
        if resources.blockio_class.value:
            raise AdjustmentRefused(
                f"NRI plugin {plugin} sets blockio class {resources.blockio_class.value!r}, "
                "but this node defines no blockio classes"
            )


def apply_to_spec(spec: dict[str, Any], adj: Adjustment) -> None:
    """Writes the merged adjustment into the OCI spec (a dict from oci/spec.py), in place."""
    process = spec.setdefault("process", {})
    linux = spec.setdefault("linux", {})
    _apply_map(spec.setdefault("annotations", {}), adj.annotations)
    _apply_map(linux.setdefault("sysctl", {}), adj.sysctl)
    mounts = [m for m in spec.get("mounts", []) if m.get("destination") not in adj.mounts]
    spec["mounts"] = mounts + [m for m in adj.mounts.values() if m is not None]
    env = dict(entry.partition("=")[::2] for entry in process.get("env", []))
    _apply_map(env, adj.env)
    process["env"] = [f"{key}={value}" for key, value in env.items()]
    for stage, hooks in adj.hooks.items():
        spec.setdefault("hooks", {}).setdefault(stage, []).extend(hooks)
    if adj.rlimits:
        kept = [r for r in process.get("rlimits", []) if r.get("type") not in adj.rlimits]
        process["rlimits"] = kept + list(adj.rlimits.values())
    if adj.args is not None:
        process["args"] = adj.args
    if adj.oom_score_adj is not None:
        process["oomScoreAdj"] = adj.oom_score_adj
    if adj.cgroups_path:
        linux["cgroupsPath"] = adj.cgroups_path
    _apply_devices(linux, adj.devices)
    _apply_resources(linux.setdefault("resources", {}), adj)
    _apply_single(process, "ioPriority", adj.io_priority)
    _apply_single(process, "scheduler", adj.scheduler)
    _apply_single(linux, "seccomp", adj.seccomp)
    _apply_single(linux, "memoryPolicy", adj.memory_policy)
    if adj.namespaces:
        kept = [n for n in linux.get("namespaces", []) if n.get("type") not in adj.namespaces]
        linux["namespaces"] = kept + [n for n in adj.namespaces.values() if n is not None]
    if adj.net_devices:
        _apply_map(linux.setdefault("netDevices", {}), adj.net_devices)
    _apply_rdt(linux, adj)


def _apply_single(target: dict[str, Any], key: str, value: Any) -> None:
    if value is UNSET:
        return
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value


def _apply_rdt(linux: dict[str, Any], adj: Adjustment) -> None:
    """A removal clears linux.intelRdt; values set after it (by a later plugin) start it afresh."""
    if adj.rdt_removed:
        linux.pop("intelRdt", None)
    if adj.rdt:
        linux.setdefault("intelRdt", {}).update(adj.rdt)


def _apply_map(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _apply_devices(linux: dict[str, Any], devices: dict[str, nri_pb2.LinuxDevice | None]) -> None:
    if not devices:
        return
    kept = [d for d in linux.get("devices", []) if d.get("path") not in devices]
    rules = linux.setdefault("resources", {}).setdefault("devices", [])
    for device in devices.values():
        if device is None:
            continue
        entry: dict[str, Any] = {"path": device.path, "type": device.type, "major": device.major}
        entry["minor"] = device.minor
        for name, key in (("file_mode", "fileMode"), ("uid", "uid"), ("gid", "gid")):
            if device.HasField(name):
                entry[key] = getattr(device, name).value
        kept.append(entry)
        rule = {"allow": True, "type": device.type, "major": device.major, "minor": device.minor, "access": "rwm"}
        rules.append(rule)
    linux["devices"] = kept


def _apply_resources(resources: dict[str, Any], adj: Adjustment) -> None:
    oci_keys = {(section, name): (oci_section, key) for section, name, oci_section, key in RESOURCE_VALUES}
    oci_keys.update({("cpu", "cpus"): ("cpu", "cpus"), ("cpu", "mems"): ("cpu", "mems")})
    oci_keys[("pids", "limit")] = ("pids", "limit")
    for item, value in adj.resources.items():
        section, key = oci_keys[item]
        resources.setdefault(section, {})[key] = value
    if adj.hugepages:
        kept = [h for h in resources.get("hugepageLimits", []) if h.get("pageSize") not in adj.hugepages]
        resources["hugepageLimits"] = kept + [{"pageSize": s, "limit": n} for s, n in adj.hugepages.items()]
    if adj.unified:
        resources.setdefault("unified", {}).update(adj.unified)
    if adj.device_rules:
        resources.setdefault("devices", []).extend(adj.device_rules)
