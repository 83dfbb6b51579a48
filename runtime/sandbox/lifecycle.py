"""StopPodSandbox and RemovePodSandbox: both idempotent, as api.proto demands."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
from collections.abc import Awaitable
from pathlib import Path

from crishim.oci import conmon
from crishim.runtime.container import lifecycle as containers
from crishim.runtime.errors import NotFound
from crishim.runtime.mounts import unmount
from crishim.runtime.nri import steps as nri_steps
from crishim.runtime.sandbox import holder, infra, pidholder, pinned
from crishim.runtime.services import Services
from crishim.runtime.state.records import CONTAINER_CREATED, CONTAINER_RUNNING, SANDBOX_NOTREADY

log = logging.getLogger("crishim.sandbox")


async def stop_pod_sandbox(svc: Services, sandbox_id: str) -> None:
    """Stops every container, then the infra container or the pins, then releases the network."""
    try:
        record = svc.state.sandboxes.get(sandbox_id)
    except NotFound:
        return  # api.proto: StopPodSandbox must not fail when everything is already reclaimed
    sandbox, status = record.meta, record.status
    live = [
        c
        for c in svc.state.containers.in_sandbox(sandbox_id)
        if c.status.state in (CONTAINER_CREATED, CONTAINER_RUNNING)
    ]
    if status.state == SANDBOX_NOTREADY and status.network_torn_down and not live:
        return  # stopped already: the kubelet calls this repeatedly
    async with svc.locks.hold("sandbox:" + sandbox_id):
        await asyncio.gather(
            *(containers.stop_container(svc, c.meta.id, 0) for c in svc.state.containers.in_sandbox(sandbox_id))
        )
        # Plugins hear of the stop once its containers have exited, while the pod still stands.
        await nri_steps.stop_pod_sandbox(svc, sandbox)
        steps: list[Awaitable[None]] = []
        if sandbox.infra_container:
            steps.append(infra.destroy_infra(svc, svc.handler(sandbox.runtime_handler), sandbox_id))
        elif sandbox.pid:
            held = pidholder.Holder(sandbox.pid, sandbox.conmon_pid)
            steps.append(holder.release(svc, sandbox_id, held, sandbox.cgroups_path))
        if sandbox.netns_path and not status.network_torn_down:
            # The pinned netns outlives the pause process, so CNI DEL need not wait for its end.
            steps.append(
                svc.network.teardown(sandbox_id, sandbox.netns_path, sandbox.name, sandbox.namespace, sandbox.uid)
            )
        # Both to their end before a failure is raised: a retried stop then finds neither running.
        for outcome in await asyncio.gather(*steps, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        if sandbox.shm_path:
            await asyncio.to_thread(unmount, Path(sandbox.shm_path))
        if sandbox.namespace_paths:
            await asyncio.to_thread(pinned.unpin, sandbox.namespace_paths)
        svc.state.sandboxes.update_status(
            sandbox_id, lambda s: dataclasses.replace(s, state=SANDBOX_NOTREADY, network_torn_down=True)
        )
    log.info("sandbox %s stopped", sandbox_id[:13])


async def remove_pod_sandbox(svc: Services, sandbox_id: str) -> None:
    """Removes containers (running ones too), the infra container or pins, the netns and all files."""
    try:
        sandbox = svc.state.sandboxes.get(sandbox_id).meta
    except NotFound:
        return  # api.proto: RemovePodSandbox must not fail for a removed sandbox
    await stop_pod_sandbox(svc, sandbox_id)
    async with svc.locks.hold("sandbox:" + sandbox_id):
        for container in svc.state.containers.in_sandbox(sandbox_id):
            await containers.remove_container(svc, container.meta.id)
        if sandbox.netns_path:
            await svc.network.remove_netns(sandbox.netns_path)  # idempotent: a retry may repeat it
        # The record goes before the files: a crash in between leaves a bundle no record names,
        # which the start-up sweep removes, never a listed pod whose bundle is gone.
        svc.state.sandboxes.delete(sandbox_id)
        await nri_steps.remove_pod_sandbox(svc, sandbox)
        bundle = Path(sandbox.bundle)
        await asyncio.to_thread(unmount, bundle / "rootfs")
        await asyncio.to_thread(pinned.unpin, sandbox.namespace_paths)  # a stop that failed midway
        await svc.images.arelease(f"sandbox:{sandbox_id}")
        await asyncio.to_thread(shutil.rmtree, bundle, True)
        await asyncio.to_thread(conmon.remove_leftovers, svc.config.exits_dir, svc.config.attach_dir, sandbox_id)
    log.info("sandbox %s removed", sandbox_id[:13])
