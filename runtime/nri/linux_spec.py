"""NRI's Linux adjustment messages in their OCI spec form (runtime-spec v1.3 names).

The merge in adjust.py keeps these dicts, so applying an adjustment is only
placing them in the spec. NRI's enum names are the OCI strings themselves
(IOPRIO_CLASS_RT, SCHED_FIFO, MPOL_BIND, ...), which is why they are passed
through by name; each "none"/"default" zero value means the plugin asks for no
setting, and turns into None.
"""

from __future__ import annotations

from typing import Any

from crishim.runtime.nri import nri_pb2


def io_priority(message: nri_pb2.LinuxIOPriority) -> dict[str, Any] | None:
    """process.ioPriority; IOPRIO_CLASS_NONE removes it."""
    klass = getattr(message, "class")
    if klass == nri_pb2.IOPRIO_CLASS_NONE:
        return None
    return {"class": nri_pb2.IOPrioClass.Name(klass), "priority": message.priority}


def seccomp(message: nri_pb2.LinuxSeccomp) -> dict[str, Any]:
    """linux.seccomp: the plugin's whole policy, which replaces the container's."""
    policy: dict[str, Any] = {"defaultAction": message.default_action}
    if message.HasField("default_errno"):
        policy["defaultErrnoRet"] = message.default_errno.value
    if message.architectures:
        policy["architectures"] = list(message.architectures)
    if message.flags:
        policy["flags"] = list(message.flags)
    if message.listener_path:
        policy["listenerPath"] = message.listener_path
    if message.listener_metadata:
        policy["listenerMetadata"] = message.listener_metadata
    policy["syscalls"] = [_syscall(s) for s in message.syscalls]
    return policy


def _syscall(message: nri_pb2.LinuxSyscall) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": list(message.names), "action": message.action}
    if message.HasField("errno_ret"):
        rule["errnoRet"] = message.errno_ret.value
    if message.args:
        rule["args"] = [{"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op} for a in message.args]
    return rule


def namespace(message: nri_pb2.LinuxNamespace) -> dict[str, Any]:
    entry = {"type": message.type.removeprefix("-")}
    if message.path:
        entry["path"] = message.path
    return entry


def scheduler(message: nri_pb2.LinuxScheduler) -> dict[str, Any] | None:
    """process.scheduler; SCHED_NONE removes it."""
    if message.policy == nri_pb2.SCHED_NONE:
        return None
    entry: dict[str, Any] = {"policy": nri_pb2.LinuxSchedulerPolicy.Name(message.policy)}
    entry.update(nice=message.nice, priority=message.priority)
    if message.flags:
        entry["flags"] = [nri_pb2.LinuxSchedulerFlag.Name(f) for f in message.flags]
    for name in ("runtime", "deadline", "period"):
        if getattr(message, name):
            entry[name] = getattr(message, name)
    return entry


def memory_policy(message: nri_pb2.LinuxMemoryPolicy) -> dict[str, Any]:
    """linux.memoryPolicy (set_mempolicy for the container's process)."""
    entry: dict[str, Any] = {"mode": nri_pb2.MpolMode.Name(message.mode)}
    if message.nodes:
        entry["nodes"] = message.nodes
    if message.flags:
        entry["flags"] = [nri_pb2.MpolFlag.Name(f) for f in message.flags]
    return entry


def device_rule(message: nri_pb2.LinuxDeviceCgroup) -> dict[str, Any]:
    """A linux.resources.devices rule; an empty type means every type ("a")."""
    rule: dict[str, Any] = {"allow": message.allow, "type": message.type or "a"}
    if message.HasField("major"):
        rule["major"] = message.major.value
    if message.HasField("minor"):
        rule["minor"] = message.minor.value
    rule["access"] = message.access or "rwm"
    return rule
