"""UpdateContainerResources in place (KEP-1287); the cgroup work of UpdatePodSandboxResources (rpc/stats.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

from crishim.cgroups.errors import NotFound as CgroupNotFound
from crishim.cgroups.paths import is_pod_cgroup, parent_to_fs
from crishim.cgroups.records import Resources as CgroupResources
from crishim.cgroups.stats import cgroup_for
from crishim.cri_api import api_pb2
from crishim.oci.errors import RuntimeCommandError
from crishim.oci.opts import resources_to_spec
from crishim.runtime import convert, validate
from crishim.runtime.errors import FailedPrecondition, InvalidArgument
from crishim.runtime.nri import nri_pb2
from crishim.runtime.nri import steps as nri_steps
from crishim.runtime.services import Services
from crishim.runtime.state.records import CONTAINER_CREATED, CONTAINER_RUNNING, SANDBOX_READY, SandboxMeta
from google.protobuf import json_format

log = logging.getLogger("crishim.resources")

# How the kernel refuses a value it cannot apply to a live cgroup (below the current usage, out
# of range), as the runtime passes it on: the caller's values are at fault, not the node.
KERNEL_REFUSALS = ("Invalid argument", "Device or resource busy", "Numerical result out of range")


async def update_container_resources(
    svc: Services, container_id: str, linux: api_pb2.LinuxContainerResources | None
) -> None:
    """NRI plugins are asked first (one may refuse), then the resources applied, then plugins told."""
    svc.state.containers.get(container_id)
    if linux is None:
        return
    await nri_steps.update_container(svc, container_id, linux)
    await apply_container_resources(svc, container_id, linux)
    await nri_steps.container_event(svc, nri_pb2.POST_UPDATE_CONTAINER, container_id)


async def apply_container_resources(svc: Services, container_id: str, linux: api_pb2.LinuxContainerResources) -> None:
    """The resize itself (also what an NRI plugin's UpdateContainers asks for)."""
    record = svc.state.containers.get(container_id)
    state = record.status.state
    if state not in (CONTAINER_CREATED, CONTAINER_RUNNING):
        raise FailedPrecondition(f"container {container_id} is {state}: only a live container can be resized")
    handler = svc.handler(record.meta.runtime_handler)
    res = convert.resources(linux)
    assert res is not None
    try:
        await handler.runtime.update(container_id, resources_to_spec(res))
    except RuntimeCommandError as exc:
        if not any(reason in exc.stderr for reason in KERNEL_REFUSALS):
            raise
        raise InvalidArgument(
            f"the node refused the new resources of container {container_id}: {exc.stderr.strip()}; "
            "the container keeps its previous limits"
        ) from exc
    stored = json_format.MessageToDict(linux, preserving_proto_field_name=True)
    svc.state.containers.update_status(container_id, lambda s: dataclasses.replace(s, resources=json.dumps(stored)))


def pod_cgroup_limits(
    resources: api_pb2.LinuxContainerResources, overhead: api_pb2.LinuxContainerResources | None
) -> CgroupResources:
    """The limits of a pod cgroup: the pod's resources plus its overhead, as the kubelet sizes it.

    The kubelet sends the pod's resources with the overhead taken out and the overhead
    apart (KEP-2837, pod overhead); 0 means "not set" (api.proto), a quota of -1 unlimited.
    The overhead is added only to a value that is set: it never limits what the pod leaves free.
    """
    ov = overhead if overhead is not None else api_pb2.LinuxContainerResources()

    def plus_overhead(value: int, extra: int) -> int | None:
        return value + max(extra, 0) if value > 0 else None

    quota = plus_overhead(resources.cpu_quota, ov.cpu_quota) if resources.cpu_quota >= 0 else -1
    return CgroupResources(
        cpu_shares=plus_overhead(resources.cpu_shares, ov.cpu_shares),
        cpu_quota=quota,
        cpu_period=resources.cpu_period or None,
        memory_limit=plus_overhead(resources.memory_limit_in_bytes, ov.memory_limit_in_bytes),
        cpuset_cpus=resources.cpuset_cpus or None,
        cpuset_mems=resources.cpuset_mems or None,
        unified=dict(resources.unified),
    )


def has_pod_cgroup(svc: Services, meta: SandboxMeta) -> bool:
    """A cgroup parent named for this pod alone (the kubelet's pod<uid>) that no other live pod uses."""
    if not is_pod_cgroup(meta.cgroup_parent, meta.uid):
        return False
    return not any(
        other.meta.id != meta.id
        and other.status.state == SANDBOX_READY
        and other.meta.cgroup_parent == meta.cgroup_parent
        for other in svc.state.sandboxes.all()
    )


async def update_pod_sandbox_resources(
    svc: Services,
    sandbox_id: str,
    resources: api_pb2.LinuxContainerResources | None,
    overhead: api_pb2.LinuxContainerResources | None,
) -> bool:
    """Write the pod's new limits into its own pod cgroup; returns whether anything was written.

    The kubelet owns the pod cgroup: it made it, and it resizes it before this call
    (KEP-1287), so for the kubelet the write repeats what it already set. It is not a
    no-op for everyone else: a crictl user who gives a pod a cgroup of its own and then
    calls this expects the pod to be limited, as with UpdateContainerResources. So
    crishim writes memory.max, cpu.max, cpu.weight (cpuset and unified keys when sent)
    in place, but only into a cgroup that is this pod's alone (`has_pod_cgroup`): a
    parent other pods share (crishim's default, critest's /test.slice) would limit
    them too, and then the call only checks that the sandbox exists.

    RunPodSandbox does not write LinuxPodSandboxConfig.resources the same way: there the
    kubelet sends the sum of the containers' declared limits, which is not what it gives the
    pod cgroup when a container has no limit (the pod cgroup is then unlimited).

    Under the systemd driver the files of the pod's slice are written directly, as the
    kubelet's own writes land there too. When systemd re-applies the slice's unit
    properties (a daemon-reload), it writes the kubelet's values back, the same ones for
    a kubelet pod; a slice with no such properties keeps the write until then.
    """
    meta = svc.state.sandboxes.get(sandbox_id).meta
    if resources is None:
        return False
    validate.resources(resources, "resources")
    await nri_steps.update_pod_sandbox(svc, meta, resources, overhead)
    if not has_pod_cgroup(svc, meta):
        log.debug("sandbox %s has no pod cgroup of its own: pod resources are the kubelet's", sandbox_id[:13])
        await nri_steps.post_update_pod_sandbox(svc, meta)
        return False
    limits = pod_cgroup_limits(resources, overhead)
    cgroup = cgroup_for(parent_to_fs(meta.cgroup_parent, svc.cgroup_driver))
    try:
        await asyncio.to_thread(cgroup.set_resources, limits)
    except CgroupNotFound as exc:
        # The sandbox exists; its cgroup (or a controller's file in it) does not.
        raise FailedPrecondition(
            f"pod cgroup {meta.cgroup_parent!r} of sandbox {sandbox_id} cannot be resized: {exc}"
        ) from exc
    log.info("sandbox %s: pod cgroup %s resized", sandbox_id[:13], meta.cgroup_parent)
    await nri_steps.post_update_pod_sandbox(svc, meta)
    return True
