"""The NRI steps of the pod and container flows: each tells the plugins of one change.

The flows call these by name (sandbox/run.py, container/create.py, ...); they
turn records into NRI messages and leave delivery to the adaptation.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crishim.cri_api import api_pb2
from crishim.runtime.errors import NotFound
from crishim.runtime.nri import messages, nri_pb2
from crishim.runtime.nri.adjust import Adjustment, apply_to_spec
from crishim.runtime.state.records import Container, SandboxMeta

if TYPE_CHECKING:
    from crishim.runtime.nri.plugin import Plugin
    from crishim.runtime.services import Services

log = logging.getLogger("crishim.nri")


def snapshot(svc: Services) -> tuple[list[nri_pb2.PodSandbox], list[nri_pb2.Container]]:
    """Every stored pod and container, for a plugin's Synchronize."""
    pods = [messages.pod(record.meta) for record in svc.state.sandboxes.all()]
    containers = [messages.container(record.meta, record.status) for record in svc.state.containers.all()]
    return pods, containers


async def run_pod_sandbox(svc: Services, sandbox: SandboxMeta) -> None:
    """Before the pod's record is stored: a plugin's refusal fails RunPodSandbox."""
    if svc.nri.active:
        await svc.nri.run_pod_sandbox(messages.pod(sandbox))


async def stop_pod_sandbox(svc: Services, sandbox: SandboxMeta) -> None:
    if svc.nri.active:
        await svc.nri.stop_pod_sandbox(messages.pod(sandbox))


async def remove_pod_sandbox(svc: Services, sandbox: SandboxMeta) -> None:
    if svc.nri.active:
        await svc.nri.remove_pod_sandbox(messages.pod(sandbox))


async def create_container(
    svc: Services,
    sandbox: SandboxMeta,
    container_id: str,
    config: api_pb2.ContainerConfig,
    spec: dict[str, Any],
    created_at: int,
) -> Adjustment:
    """Asks the plugins, then writes their merged adjustment into `spec`; a refusal or conflict raises."""
    if not svc.nri.active:
        return Adjustment()
    container = messages.container_from_spec(container_id, sandbox.id, config, spec, created_at)
    adjustment = await svc.nri.create_container(messages.pod(sandbox), container)
    if not adjustment.empty:
        apply_to_spec(spec, adjustment)
        log.info("container %s adjusted by NRI plugins %s", container_id[:13], sorted(set(adjustment.owners.values())))
    return adjustment


async def container_event(svc: Services, event: int, container_id: str) -> None:
    """Tells the plugins of a change to a stored container (skipped once it is gone)."""
    if not svc.nri.active:
        return
    try:
        record = svc.state.containers.get(container_id)
    except NotFound:
        return
    await _tell(svc, event, record)


async def container_removed(svc: Services, record: Container) -> None:
    """RemoveContainer, told from the record as it was just before its deletion."""
    if svc.nri.active:
        await _tell(svc, nri_pb2.REMOVE_CONTAINER, record)


async def _tell(svc: Services, event: int, record: Container) -> None:
    try:
        sandbox = svc.state.sandboxes.get(record.meta.sandbox_id).meta
    except NotFound:
        return
    await svc.nri.container_event(event, messages.pod(sandbox), messages.container(record.meta, record.status))


async def update_container(svc: Services, container_id: str, resources: api_pb2.LinuxContainerResources) -> None:
    """Before new resources are applied; a plugin's refusal fails UpdateContainerResources."""
    if not svc.nri.active:
        return
    record = svc.state.containers.get(container_id)
    sandbox = svc.state.sandboxes.get(record.meta.sandbox_id).meta
    wanted = messages.cri_resources(resources)
    await svc.nri.update_container(messages.pod(sandbox), messages.container(record.meta, record.status), wanted)


async def update_pod_sandbox(
    svc: Services,
    sandbox: SandboxMeta,
    resources: api_pb2.LinuxContainerResources,
    overhead: api_pb2.LinuxContainerResources | None,
) -> None:
    """Before a pod's cgroup is resized; a plugin's refusal fails UpdatePodSandboxResources."""
    if svc.nri.active:
        extra = messages.cri_resources(overhead) if overhead is not None else nri_pb2.LinuxResources()
        await svc.nri.update_pod_sandbox(messages.pod(sandbox), messages.cri_resources(resources), extra)


async def post_update_pod_sandbox(svc: Services, sandbox: SandboxMeta) -> None:
    if svc.nri.active:
        await svc.nri.post_update_pod_sandbox(messages.pod(sandbox))


async def plugin_updates(
    svc: Services, plugin: Plugin, request: nri_pb2.UpdateContainersRequest
) -> nri_pb2.UpdateContainersResponse:
    """A plugin's own UpdateContainers: each update applied as UpdateContainerResources would."""
    from crishim.runtime.container.resources import apply_container_resources

    failed = []
    for update in request.update:
        try:
            await apply_container_resources(
                svc, update.container_id, messages.nri_to_cri_resources(update.linux.resources)
            )
        except Exception as exc:  # noqa: BLE001 - reported back to the plugin, per update
            log.warning("NRI plugin %s: update of container %s failed: %s", plugin.label, update.container_id[:13], exc)
            if not update.ignore_failure:
                failed.append(update)
    for eviction in request.evict:
        log.warning(
            "NRI plugin %s asked to evict %s (%s): not supported", plugin.label, eviction.container_id, eviction.reason
        )
    return nri_pb2.UpdateContainersResponse(failed=failed)
