"""NRI's PodSandbox and Container messages, made from crishim's records and OCI specs.

Events after creation describe a container from its record (no disk reads on
the event loop); CreateContainer describes it from the OCI spec about to be
written, since that is what the plugins adjust.
"""

from __future__ import annotations

import json
from typing import Any

from crishim.cri_api import api_pb2
from crishim.runtime.nri import nri_pb2
from crishim.runtime.state.records import (
    CONTAINER_CREATED,
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    ContainerMeta,
    ContainerStatus,
    SandboxMeta,
)

STATES = {
    CONTAINER_CREATED: nri_pb2.CONTAINER_CREATED,
    CONTAINER_RUNNING: nri_pb2.CONTAINER_RUNNING,
    CONTAINER_EXITED: nri_pb2.CONTAINER_STOPPED,
}
# The OCI spec's namespace types, as NRI names them (the same strings).
NAMESPACE_TYPES = ("pid", "network", "ipc", "uts", "mount", "user", "cgroup", "time")


def pod(meta: SandboxMeta) -> nri_pb2.PodSandbox:
    """What a plugin learns of a pod: identity, labels, annotations, cgroups, pid (0 without a pause
    process), the namespaces it holds by path, and IPs."""
    ips = [ip for ip in (meta.ip, *meta.additional_ips) if ip]
    linux = nri_pb2.LinuxPodSandbox(cgroup_parent=meta.cgroup_parent, cgroups_path=meta.cgroups_path)
    if meta.netns_path:
        linux.namespaces.append(nri_pb2.LinuxNamespace(type="network", path=meta.netns_path))
    for kind, path in sorted(meta.namespace_paths.items()):  # a pod without a pause process: its pins
        linux.namespaces.append(nri_pb2.LinuxNamespace(type=kind, path=path))
    return nri_pb2.PodSandbox(
        id=meta.id,
        name=meta.name,
        uid=meta.uid,
        namespace=meta.namespace,
        labels=meta.labels,
        annotations=meta.annotations,
        runtime_handler=meta.runtime_handler,
        linux=linux,
        pid=meta.pid,
        ips=ips,
    )


def container(meta: ContainerMeta, status: ContainerStatus) -> nri_pb2.Container:
    """A container as its record has it: identity, command, environment, state and exit."""
    config = api_pb2.ContainerConfig.FromString(meta.config)
    message = nri_pb2.Container(
        id=meta.id,
        pod_sandbox_id=meta.sandbox_id,
        name=meta.name,
        state=STATES.get(status.state, nri_pb2.CONTAINER_UNKNOWN),
        labels=meta.labels,
        annotations=meta.annotations,
        args=[*config.command, *config.args],
        env=[f"{kv.key}={kv.value}" for kv in config.envs],
        pid=meta.pid,
        created_at=meta.created_at,
        started_at=status.started_at,
        finished_at=status.finished_at,
        exit_code=status.exit_code,
        status_reason=status.reason,
        status_message=status.message,
        linux=nri_pb2.LinuxContainer(cgroups_path=meta.cgroups_path),
    )
    if meta.user:
        user = json.loads(meta.user)
        message.user.CopyFrom(
            nri_pb2.User(uid=user["uid"], gid=user["gid"], additional_gids=user.get("supplemental_groups", []))
        )
    return message


def container_from_spec(
    container_id: str, sandbox_id: str, config: api_pb2.ContainerConfig, spec: dict[str, Any], created_at: int
) -> nri_pb2.Container:
    """The container about to be created, as its OCI spec describes it."""
    process = spec.get("process", {})
    linux = spec.get("linux", {})
    user = process.get("user", {})
    return nri_pb2.Container(
        id=container_id,
        pod_sandbox_id=sandbox_id,
        name=config.metadata.name,
        state=nri_pb2.CONTAINER_UNKNOWN,
        labels=dict(config.labels),
        annotations=dict(spec.get("annotations", {})),
        args=process.get("args", []),
        env=process.get("env", []),
        mounts=[spec_mount(m) for m in spec.get("mounts", [])],
        hooks=spec_hooks(spec.get("hooks", {})),
        linux=spec_linux(linux, process),
        rlimits=[
            nri_pb2.POSIXRlimit(type=r["type"], hard=r.get("hard", 0), soft=r.get("soft", 0))
            for r in process.get("rlimits", [])
        ],
        created_at=created_at,
        CDI_devices=[nri_pb2.CDIDevice(name=d.name) for d in config.CDI_devices],
        user=nri_pb2.User(
            uid=user.get("uid", 0), gid=user.get("gid", 0), additional_gids=user.get("additionalGids", [])
        ),
    )


def spec_mount(mount: dict[str, Any]) -> nri_pb2.Mount:
    return nri_pb2.Mount(
        destination=mount.get("destination", ""),
        type=mount.get("type", ""),
        source=mount.get("source", ""),
        options=mount.get("options", []),
    )


def spec_hooks(hooks: dict[str, Any]) -> nri_pb2.Hooks:
    message = nri_pb2.Hooks()
    for spec_name, field_name in HOOK_FIELDS.items():
        for hook in hooks.get(spec_name, []):
            item = nri_pb2.Hook(path=hook["path"], args=hook.get("args", []), env=hook.get("env", []))
            if "timeout" in hook:
                item.timeout.value = hook["timeout"]
            getattr(message, field_name).append(item)
    return message


# OCI spec hook lists and NRI's field names for them.
HOOK_FIELDS = {
    "prestart": "prestart",
    "createRuntime": "create_runtime",
    "createContainer": "create_container",
    "startContainer": "start_container",
    "poststart": "poststart",
    "poststop": "poststop",
}


def spec_linux(linux: dict[str, Any], process: dict[str, Any]) -> nri_pb2.LinuxContainer:
    message = nri_pb2.LinuxContainer(
        namespaces=[
            nri_pb2.LinuxNamespace(type=n["type"], path=n.get("path", "")) for n in linux.get("namespaces", [])
        ],
        devices=[
            nri_pb2.LinuxDevice(
                path=d["path"], type=d.get("type", ""), major=d.get("major", 0), minor=d.get("minor", 0)
            )
            for d in linux.get("devices", [])
        ],
        resources=spec_resources(linux.get("resources", {})),
        cgroups_path=linux.get("cgroupsPath", ""),
        sysctl=linux.get("sysctl", {}),
    )
    if "oomScoreAdj" in process:
        message.oom_score_adj.value = process["oomScoreAdj"]
    if "ioPriority" in process:
        klass = nri_pb2.IOPrioClass.Value(process["ioPriority"]["class"])
        setattr(message.io_priority, "class", klass)
        message.io_priority.priority = process["ioPriority"].get("priority", 0)
    rdt = linux.get("intelRdt", {})
    if "closID" in rdt:
        message.rdt.clos_id.value = rdt["closID"]
    if "schemata" in rdt:
        message.rdt.schemata.value.extend(rdt["schemata"])
    if "enableMonitoring" in rdt:
        message.rdt.enable_monitoring.value = rdt["enableMonitoring"]
    return message


def spec_resources(resources: dict[str, Any]) -> nri_pb2.LinuxResources:
    """The OCI spec's linux.resources in NRI's form (values present in the spec only)."""
    message = nri_pb2.LinuxResources(unified=resources.get("unified", {}))
    memory, cpu = resources.get("memory", {}), resources.get("cpu", {})
    for key, field_name in MEMORY_FIELDS:
        if key in memory:
            getattr(message.memory, field_name).value = memory[key]
    for key, field_name in (("shares", "shares"), ("quota", "quota"), ("period", "period")):
        if key in cpu:
            getattr(message.cpu, field_name).value = cpu[key]
    message.cpu.cpus = cpu.get("cpus", "")
    message.cpu.mems = cpu.get("mems", "")
    for limit in resources.get("hugepageLimits", []):
        message.hugepage_limits.append(nri_pb2.HugepageLimit(page_size=limit["pageSize"], limit=limit["limit"]))
    if "pids" in resources:
        message.pids.limit = resources["pids"].get("limit", 0)
    for rule in resources.get("devices", []):
        item = nri_pb2.LinuxDeviceCgroup(allow=rule.get("allow", False), type=rule.get("type", "a"))
        item.access = rule.get("access", "")
        for key in ("major", "minor"):
            if key in rule:
                getattr(item, key).value = rule[key]
        message.devices.append(item)
    return message


# OCI linux.resources.memory keys and NRI's LinuxMemory fields for them.
MEMORY_FIELDS = (
    ("limit", "limit"),
    ("reservation", "reservation"),
    ("swap", "swap"),
    ("kernel", "kernel"),
    ("kernelTCP", "kernel_tcp"),
    ("swappiness", "swappiness"),
    ("disableOOMKiller", "disable_oom_killer"),
    ("useHierarchy", "use_hierarchy"),
)


def cri_resources(linux: api_pb2.LinuxContainerResources) -> nri_pb2.LinuxResources:
    """CRI's container resources in NRI's form (zero values are CRI's "unset")."""
    message = nri_pb2.LinuxResources(unified=dict(linux.unified))
    for value, holder in (
        (linux.memory_limit_in_bytes, message.memory.limit),
        (linux.memory_swap_limit_in_bytes, message.memory.swap),
        (linux.cpu_quota, message.cpu.quota),
    ):
        if value:
            holder.value = value
    for value, holder in ((linux.cpu_shares, message.cpu.shares), (linux.cpu_period, message.cpu.period)):
        if value:
            holder.value = value
    message.cpu.cpus, message.cpu.mems = linux.cpuset_cpus, linux.cpuset_mems
    for limit in linux.hugepage_limits:
        message.hugepage_limits.append(nri_pb2.HugepageLimit(page_size=limit.page_size, limit=limit.limit))
    return message


def nri_to_cri_resources(resources: nri_pb2.LinuxResources) -> api_pb2.LinuxContainerResources:
    """A plugin's requested resources as the CRI message UpdateContainerResources takes."""
    memory, cpu = resources.memory, resources.cpu
    return api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=memory.limit.value,
        memory_swap_limit_in_bytes=memory.swap.value,
        cpu_shares=cpu.shares.value,
        cpu_quota=cpu.quota.value,
        cpu_period=cpu.period.value,
        cpuset_cpus=cpu.cpus,
        cpuset_mems=cpu.mems,
        unified=dict(resources.unified),
        hugepage_limits=[
            api_pb2.HugepageLimit(page_size=h.page_size, limit=h.limit) for h in resources.hugepage_limits
        ],
    )
