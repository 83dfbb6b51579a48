"""CreateContainer: name -> checks -> overlay rootfs -> mounts -> OCI spec -> conmon + `runc create`.

The container's name is reserved before any work and the sandbox is found
READY under the sandbox's lock, the one StopPodSandbox and RemovePodSandbox
hold, so a container is never made in a pod being stopped. The container is
CREATED when this returns; its process waits for StartContainer inside
`runc create`'s init.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from crishim.cri_api import api_pb2
from crishim.oci import cdi
from crishim.oci.conmon import ConmonResult
from crishim.oci.inputs import ContainerSpecInput, Mount
from crishim.oci.opts import Spec
from crishim.oci.spec import build_container_spec
from crishim.runtime import rootfs as rootfs_mount
from crishim.runtime import validate
from crishim.runtime.checkpoint import late_pages, memstage, restore
from crishim.runtime.checkpoint.phases import LOG_PREFIX, Phases
from crishim.runtime.container import launch as launching
from crishim.runtime.container import volumes
from crishim.runtime.container.request import ContainerRequest, checked_request, spec_input
from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.events import CREATED, ContainerEvent
from crishim.runtime.ids import new_id, now_ns
from crishim.runtime.mounts import unmount
from crishim.runtime.nri import nri_pb2
from crishim.runtime.nri import steps as nri_steps
from crishim.runtime.services import Services
from crishim.runtime.state.records import SANDBOX_READY, ContainerMeta, ContainerStatus, SandboxMeta
from crishim.runtime.state.store import container_name_key
from google.protobuf import json_format

log = logging.getLogger("crishim.container")


async def create_container(
    svc: Services, sandbox_id: str, config: api_pb2.ContainerConfig, sandbox_config: api_pb2.PodSandboxConfig
) -> str:
    validate.container_config(config)
    md = config.metadata
    name_key = container_name_key(sandbox_id, md.name, md.attempt)
    container_id = new_id()
    what = f"container {md.name!r} attempt {md.attempt} in sandbox {sandbox_id}"
    with svc.names.reserved(name_key, container_id, what, lambda: _recorded_id(svc, sandbox_id, md)):
        if restore.names_archive(config.image.image):
            meta = await _create_restored(svc, sandbox_id, config, container_id)
        elif (image := restore.checkpoint_image(svc, sandbox_id, config.image.image)) is not None:
            meta = await _create_restored(svc, sandbox_id, config, container_id, image)
        else:
            async with svc.locks.hold("sandbox:" + sandbox_id):
                sandbox = ready_sandbox(svc, sandbox_id)
                meta = await _create(svc, checked_request(svc, sandbox, config), container_id)
    svc.events.publish(ContainerEvent(container_id, sandbox_id, CREATED, meta.created_at))
    await nri_steps.container_event(svc, nri_pb2.POST_CREATE_CONTAINER, container_id)
    log.info("container %s (%s) created in sandbox %s", container_id[:13], md.name, sandbox_id[:13])
    return container_id


def _recorded_id(svc: Services, sandbox_id: str, md: api_pb2.ContainerMetadata) -> str | None:
    existing = svc.state.containers.find_by_name(container_name_key(sandbox_id, md.name, md.attempt))
    return None if existing is None else existing.meta.id


def ready_sandbox(svc: Services, sandbox_id: str) -> SandboxMeta:
    """The sandbox, if READY; read under its lock so a stop cannot be halfway through."""
    sandbox = svc.state.sandboxes.get(sandbox_id)
    if sandbox.status.state != SANDBOX_READY:
        raise FailedPrecondition(
            f"pod sandbox {sandbox_id} is not ready; containers can only be created in a ready sandbox"
        )
    return sandbox.meta


async def _create_restored(
    svc: Services,
    sandbox_id: str,
    config: api_pb2.ContainerConfig,
    container_id: str,
    image: restore.CheckpointImage | None = None,
) -> ContainerMeta:
    """A container made from a checkpoint archive or image (runtime/checkpoint/restore.py), restore pending."""
    phases = Phases()
    source = await restore.restore_source(svc, config, container_id, image)
    phases.mark("unpack")
    try:
        await restore.check_provenance(source)
        async with svc.locks.hold("sandbox:" + sandbox_id):
            sandbox = ready_sandbox(svc, sandbox_id)
            handler = svc.handler(sandbox.runtime_handler)
            base = restore.base_image(svc, source, svc.images.image_set(handler.name))
            await restore.check_can_restore(handler)
            restored = restore.restored_config(config, base, source.unpacked.spec)
            phases.mark("checks")
            meta = await _create(svc, checked_request(svc, sandbox, restored), container_id, source)
            phases.mark("rootfs, images and spec")
    finally:
        await restore.discard(source)
    phases.mark("stage removed")
    log.info("%s restore's create of %s: %s", LOG_PREFIX, container_id[:13], phases.summary())
    return meta


async def _create(
    svc: Services, request: ContainerRequest, container_id: str, source: restore.RestoreSource | None = None
) -> ContainerMeta:
    """The container's rootfs, mounts, spec and record; its process waits in `runc create`, or,
    made from a checkpoint (`source`), there is none until StartContainer restores it."""
    bundle = svc.container_dir(container_id)
    base_input = spec_input(svc, request, container_id, bundle / "rootfs")
    if source is not None:
        annotations = {**base_input.annotations, **restore.criu_annotations(bundle)}
        base_input = dataclasses.replace(base_input, annotations=annotations)
    logs = log_path(request)
    container_log = Path(logs) if logs else bundle / "container.log"
    async with AsyncExitStack() as undo:
        await prepare_rootfs(svc, undo, request, container_id, bundle)
        if source is not None:
            await asyncio.to_thread(restore.apply_to_bundle, source, bundle / "rootfs", bundle, container_log)
            # Before the bundle goes: images bound there from memory hold a mount.
            undo.push_async_callback(asyncio.to_thread, memstage.release_bundle_images, bundle)
            if await asyncio.to_thread(restore.start_late_copy, source, bundle):  # goes on behind this call
                undo.push_async_callback(asyncio.to_thread, late_pages.cancel, bundle)
        mounts, image_volumes = await build_mounts(svc, undo, request, container_id, base_input.mounts)
        inp = dataclasses.replace(base_input, mounts=mounts)
        # From the NRI hook until the record is stored, a plugin's synchronisation waits.
        async with svc.nri.creating():
            edit = restore.with_late_hook(source, bundle) if source is not None else None
            spec = await write_spec(svc, request, inp, bundle, edit)
            inp = dataclasses.replace(inp, cgroups_path=spec.get("linux", {}).get("cgroupsPath", inp.cgroups_path))
            if source is None:
                result = await launching.launch(
                    svc,
                    request.handler,
                    container_id,
                    bundle,
                    log_path=container_log,
                    tty=request.config.tty,
                    stdin=request.config.stdin,
                    stdin_once=request.config.stdin_once,
                    cgroups_path=inp.cgroups_path,
                )
                undo.push_async_callback(launching.kill_and_delete, svc, request.handler, container_id)
            else:
                result = ConmonResult(pid=0, conmon_pid=0)  # known once StartContainer restores it
            meta = container_record(request, inp, bundle, spec, result, image_volumes)
            status = dataclasses.replace(initial_status(request.config), restore_pending=source is not None)
            svc.state.containers.add(meta, status)
        undo.pop_all()
    return meta


async def prepare_rootfs(
    svc: Services, undo: AsyncExitStack, request: ContainerRequest, container_id: str, bundle: Path
) -> None:
    """The bundle directory and the image's overlay at bundle/rootfs."""
    await asyncio.to_thread(bundle.mkdir, parents=True, mode=0o711)  # traversable by user-namespaced roots
    undo.push_async_callback(asyncio.to_thread, shutil.rmtree, bundle, True)
    # The lease comes first: a RemoveImage between mount and lease must not take the layers.
    svc.images.acquire(request.image.id, f"container:{container_id}", request.image_set)
    undo.push_async_callback(svc.images.arelease, f"container:{container_id}")
    # With a pod user namespace the layers are seen through its mapping (idmapped mounts).
    idmapped = request.userns is not None and request.handler.features.idmap_mounts
    userns_path = f"/proc/{request.sandbox.pid}/ns/user" if idmapped else None
    undo.callback(rootfs_mount.unmount_idmapped_layers, bundle / "idmapped")
    await rootfs_mount.mount_image_rootfs(svc, request.image.id, bundle / "rootfs", bundle, userns_path)
    undo.callback(unmount, bundle / "rootfs")


async def build_mounts(
    svc: Services, undo: AsyncExitStack, request: ContainerRequest, container_id: str, base: tuple[Mount, ...]
) -> tuple[tuple[Mount, ...], tuple[str, ...]]:
    """The pod's files, then config.mounts in order (a later one replaces one at the same path).

    Image volumes are mounted here, under the bundle; returns the mounts and those volumes' paths.
    """
    mounts = list(base)
    image_volumes: list[str] = []
    bundle = svc.container_dir(container_id)
    for i, (requested, bind) in enumerate(zip(request.config.mounts, request.binds, strict=True)):
        mount = bind
        if mount is None:
            where = f"config.mounts[{i}]"
            mount = await volumes.mount_image_volume(svc, container_id, bundle, requested, where, request.image_set)
            undo.callback(volumes.unmount_image_volume, svc, Path(mount.host_path))
            image_volumes.append(mount.host_path)
        mounts = [x for x in mounts if x.container_path != mount.container_path] + [mount]
    return tuple(mounts), tuple(image_volumes)


async def write_spec(
    svc: Services,
    request: ContainerRequest,
    inp: ContainerSpecInput,
    bundle: Path,
    edit: Callable[[Spec], None] | None = None,
) -> Spec:
    """The OCI spec with NRI plugins' adjustments, CDI devices' edits and `edit`'s, written as bundle/config.json."""
    config = request.config
    spec = build_container_spec(inp)
    adjustment = await nri_steps.create_container(svc, request.sandbox, inp.id, config, spec, now_ns())
    cdi_names = [d.name for d in config.CDI_devices] + cdi.names_from_annotations(config.annotations)
    cdi_names += adjustment.cdi_devices
    cdi_edits = await asyncio.to_thread(cdi.resolve_cdi_devices, cdi_names, svc.config.cdi_spec_dirs)
    cdi.apply_cdi_edits(spec, cdi_edits)
    if request.userns is not None:
        rootfs = Path(inp.rootfs)
        await asyncio.to_thread(rootfs_mount.create_mount_points, rootfs, spec.get("mounts", []))
        root_uid, root_gid = request.userns.uid_mappings[0].host_id, request.userns.gid_mappings[0].host_id
        await asyncio.to_thread(rootfs_mount.chown_writable_layer, bundle, root_uid, root_gid)
    if edit is not None:
        edit(spec)
    await asyncio.to_thread((bundle / "config.json").write_text, json.dumps(spec))
    return spec


def log_path(request: ContainerRequest) -> str:
    """Where the kubelet wants the container's log: under the pod's log directory, or nowhere."""
    if request.sandbox.log_directory and request.config.log_path:
        return str(Path(request.sandbox.log_directory) / request.config.log_path)
    return ""


def container_record(
    request: ContainerRequest,
    inp: ContainerSpecInput,
    bundle: Path,
    spec: Spec,
    result: ConmonResult,
    image_volumes: tuple[str, ...],
) -> ContainerMeta:
    config, image = request.config, request.image
    proc_user = spec.get("process", {}).get("user", {})
    user = {
        "uid": proc_user.get("uid", 0),
        "gid": proc_user.get("gid", 0),
        "supplemental_groups": proc_user.get("additionalGids", []),
    }
    return ContainerMeta(
        id=inp.id,
        sandbox_id=request.sandbox.id,
        name=config.metadata.name,
        attempt=config.metadata.attempt,
        created_at=now_ns(),
        config=config.SerializeToString(),
        image=config.image.image,
        image_id=image.id,
        image_ref=image.repo_digests[0] if image.repo_digests else image.id,
        bundle=str(bundle),
        rootfs=inp.rootfs,
        runtime_handler=request.handler.name,
        log_path=log_path(request),
        pid=result.pid,
        conmon_pid=result.conmon_pid,
        cgroups_path=inp.cgroups_path,
        tty=config.tty,
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        user=json.dumps(user),
        image_volumes=image_volumes,
        mounts=json.dumps([_as_json(m) for m in config.mounts]),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
    )


def initial_status(config: api_pb2.ContainerConfig) -> ContainerStatus:
    """CREATED, with the resources asked at creation (UpdateContainerResources replaces them)."""
    linux = config.linux
    return ContainerStatus(resources=json.dumps(_as_json(linux.resources)) if linux.HasField("resources") else "")


def _as_json(message: Any) -> dict[str, Any]:
    data: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return data
