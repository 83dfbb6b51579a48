"""CreateContainer: image -> overlay rootfs -> OCI spec -> bundle -> conmon + `runc create`.

The container is CREATED when this returns; its process waits for
StartContainer inside `runc create`'s init.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from crishim.cri_api import api_pb2
from crishim.images import errors as image_errors
from crishim.oci import cdi
from crishim.oci.inputs import ContainerSpecInput, Mount, NamespaceMode
from crishim.oci.spec import build_container_spec
from crishim.runtime import convert, validate
from crishim.runtime import rootfs as rootfs_mount
from crishim.runtime.container import launch as launching
from crishim.runtime.container import volumes
from crishim.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from crishim.runtime.events import CREATED, ContainerEvent
from crishim.runtime.ids import new_id, now_ns
from crishim.runtime.mounts import unmount
from crishim.runtime.oom import clamp_and_log
from crishim.runtime.sandbox import infra
from crishim.runtime.services import Services
from crishim.runtime.state.records import CONTAINER_CREATED, SANDBOX_READY, ContainerMeta, SandboxMeta

log = logging.getLogger("crishim.container")


def image_args(config: api_pb2.ContainerConfig, image_cfg: dict[str, Any]) -> tuple[str, ...]:
    """Kubernetes semantics: command replaces Entrypoint (and drops Cmd); args replace Cmd."""
    entrypoint = list(image_cfg.get("Entrypoint") or [])
    cmd = list(image_cfg.get("Cmd") or [])
    if config.command:
        entrypoint = list(config.command)
        cmd = []
    if config.args:
        cmd = list(config.args)
    args = entrypoint + cmd
    if not args:
        raise InvalidArgument("no command: neither the container config nor the image gives one")
    return tuple(args)


def merged_env(config: api_pb2.ContainerConfig, image_cfg: dict[str, Any]) -> tuple[str, ...]:
    env: dict[str, str] = {}
    for item in image_cfg.get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    for kv in config.envs:
        # api.proto carries env values as bytes; OCI specs hold strings.
        value = kv.value
        env[kv.key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return tuple(f"{k}={v}" for k, v in env.items())


async def create_container(
    svc: Services, sandbox_id: str, config: api_pb2.ContainerConfig, sandbox_config: api_pb2.PodSandboxConfig
) -> str:
    validate.container_config(config)
    sandbox = svc.state.get_sandbox(sandbox_id)
    if sandbox.state != SANDBOX_READY:
        raise FailedPrecondition(
            f"pod sandbox {sandbox_id} is not ready; containers can only be created in a ready sandbox"
        )
    async with svc.locks.hold("sandbox:" + sandbox_id):
        return await _create(svc, sandbox, config)


async def _create(svc: Services, sandbox: SandboxMeta, config: api_pb2.ContainerConfig) -> str:
    handler = svc.handler(sandbox.runtime_handler)
    image_set = svc.images.image_set(handler.name)  # KEP-4216: the handler's own images, if separate
    try:
        image = svc.images.resolve(config.image.image, image_set)
    except image_errors.NotFound as exc:
        raise NotFound(
            f"image {config.image.image!r} is not present; pull it first (crictl pull {config.image.image})"
        ) from exc
    image_cfg = (image.config or {}).get("config") or {}
    linux = config.linux
    sc = linux.security_context
    ns = sc.namespace_options
    pod_config = api_pb2.PodSandboxConfig.FromString(sandbox.config)
    pod_ns = pod_config.linux.security_context.namespace_options
    field = "config.linux.security_context"

    container_id = new_id()
    bundle = svc.container_dir(container_id)
    meta_name = config.metadata.name

    async with AsyncExitStack() as undo:
        bundle.mkdir(parents=True, mode=0o711)  # traversable by user-namespaced roots
        undo.push_async_callback(asyncio.to_thread, shutil.rmtree, bundle, True)
        # The lease comes first: a RemoveImage between mount and lease must not take the layers.
        svc.images.acquire(image.id, f"container:{container_id}", image_set)
        undo.push_async_callback(svc.images.arelease, f"container:{container_id}")
        rootfs = bundle / "rootfs"
        userns = convert.user_namespace(pod_ns, "sandbox namespace_options")
        # With a pod user namespace the layers are seen through its mapping (idmapped mounts).
        userns_path = f"/proc/{sandbox.pid}/ns/user" if userns and handler.features.idmap_mounts else None
        undo.callback(rootfs_mount.unmount_idmapped_layers, bundle / "idmapped")
        await rootfs_mount.mount_image_rootfs(svc, image.id, rootfs, bundle, userns_path)
        undo.callback(unmount, rootfs)

        mounts: list[Mount] = list(pod_mounts(sandbox, config))
        image_volume_paths: list[str] = []
        validate.mount_paths(config.mounts, "config.mounts")
        for i, m in enumerate(config.mounts):
            where = f"config.mounts[{i}]"
            if m.HasField("image") and m.image.image:
                mount = await volumes.mount_image_volume(svc, container_id, bundle, m, where, image_set)
                undo.callback(volumes.unmount_image_volume, svc, Path(mount.host_path))
                image_volume_paths.append(mount.host_path)
            else:
                mount = convert.bind_mount(m, where, features=handler.features, handler=handler.name)
            mounts = [x for x in mounts if x.container_path != mount.container_path] + [mount]

        target_pid = None
        if ns.pid == api_pb2.TARGET or ns.network == api_pb2.TARGET or ns.ipc == api_pb2.TARGET:
            if not ns.target_id:
                raise InvalidArgument(f"{field}.namespace_options.target_id is empty but a namespace mode is TARGET")
            target = svc.state.get_container(ns.target_id)
            if target.sandbox_id != sandbox.id or not target.pid:
                raise InvalidArgument(
                    f"{field}.namespace_options.target_id {ns.target_id} is not a running container of this pod"
                )
            target_pid = target.pid

        privileged = sc.privileged
        validate.privileged(sc, pod_config.linux.security_context.privileged, userns is not None, field)
        log_path = ""
        if sandbox.log_directory and config.log_path:
            log_path = str(Path(sandbox.log_directory) / config.log_path)
        spec_input = ContainerSpecInput(
            id=container_id,
            rootfs=str(rootfs),
            args=image_args(config, image_cfg),
            env=merged_env(config, image_cfg),
            cwd=config.working_dir or image_cfg.get("WorkingDir") or "/",
            user=convert.user_spec(sc, image_cfg.get("User", ""), field),
            hostname=_pod_hostname(sandbox),
            tty=config.tty,
            stdin=config.stdin,
            sandbox_pid=sandbox.pid,
            netns_path=sandbox.netns_path or None,
            network_mode=NamespaceMode.NODE if pod_ns.network == api_pb2.NODE else NamespaceMode.POD,
            pid_mode=_container_pid_mode(ns, pod_ns),
            ipc_mode=NamespaceMode.NODE if pod_ns.ipc == api_pb2.NODE else NamespaceMode.POD,
            target_pid=target_pid,
            userns=userns,
            mounts=tuple(mounts),
            devices=tuple(convert.device(d, f"config.devices[{i}]") for i, d in enumerate(config.devices)),
            resources=convert.resources(linux.resources) if linux.HasField("resources") else None,
            cgroups_path=infra.cgroups_path(svc, pod_config.linux.cgroup_parent, container_id),
            oom_score_adj=clamp_and_log(linux.resources.oom_score_adj) if linux.HasField("resources") else None,
            annotations={**dict(config.annotations)},
            privileged=privileged,
            capabilities_add=tuple(sc.capabilities.add_capabilities),
            capabilities_drop=tuple(sc.capabilities.drop_capabilities),
            capabilities_ambient=tuple(sc.capabilities.add_ambient_capabilities),
            no_new_privs=sc.no_new_privs,
            readonly_rootfs=sc.readonly_rootfs,
            # proto3 cannot tell an empty list from an absent one: empty keeps our defaults.
            masked_paths=tuple(sc.masked_paths) if sc.masked_paths else None,
            readonly_paths=tuple(sc.readonly_paths) if sc.readonly_paths else None,
            seccomp=convert.seccomp_profile(
                sc.seccomp if sc.HasField("seccomp") else None, sc.seccomp_profile_path, field
            ),
            apparmor=convert.apparmor_profile(
                sc.apparmor if sc.HasField("apparmor") else None, sc.apparmor_profile, field
            ),
            features=handler.features,
        )
        spec = build_container_spec(spec_input)
        cdi_names = [d.name for d in config.CDI_devices] + cdi.names_from_annotations(config.annotations)
        cdi_edits = await asyncio.to_thread(cdi.resolve_cdi_devices, cdi_names, svc.config.cdi_spec_dirs)
        cdi.apply_cdi_edits(spec, cdi_edits)
        if userns is not None:
            await asyncio.to_thread(rootfs_mount.create_mount_points, rootfs, spec.get("mounts", []))
            root_uid, root_gid = userns.uid_mappings[0].host_id, userns.gid_mappings[0].host_id
            await asyncio.to_thread(rootfs_mount.chown_writable_layer, bundle, root_uid, root_gid)
        await asyncio.to_thread((bundle / "config.json").write_text, json.dumps(spec))
        proc_user = spec.get("process", {}).get("user", {})

        result = await launching.launch(
            svc,
            handler,
            container_id,
            bundle,
            log_path=Path(log_path) if log_path else bundle / "container.log",
            tty=config.tty,
            stdin=config.stdin,
            stdin_once=config.stdin_once,
            cgroups_path=spec_input.cgroups_path,
        )
        undo.push_async_callback(launching.kill_and_delete, svc, handler, container_id)

        meta = ContainerMeta(
            id=container_id,
            sandbox_id=sandbox.id,
            name=meta_name,
            attempt=config.metadata.attempt,
            state=CONTAINER_CREATED,
            created_at=now_ns(),
            config=config.SerializeToString(),
            image=config.image.image,
            image_id=image.id,
            image_ref=image.repo_digests[0] if image.repo_digests else image.id,
            bundle=str(bundle),
            rootfs=str(rootfs),
            runtime_handler=handler.name,
            log_path=log_path,
            pid=result.pid,
            conmon_pid=result.conmon_pid,
            cgroups_path=spec_input.cgroups_path,
            tty=config.tty,
            stdin=config.stdin,
            stdin_once=config.stdin_once,
            resources=json.dumps(_resources_json(linux.resources)) if linux.HasField("resources") else "",
            user=json.dumps(
                {
                    "uid": proc_user.get("uid", 0),
                    "gid": proc_user.get("gid", 0),
                    "supplemental_groups": proc_user.get("additionalGids", []),
                }
            ),
            image_volumes=tuple(image_volume_paths),
            mounts=json.dumps([_mount_json(m) for m in config.mounts]),
            labels=dict(config.labels),
            annotations=dict(config.annotations),
        )
        svc.state.add_container(meta)
        undo.pop_all()
    svc.events.publish(ContainerEvent(container_id, sandbox.id, CREATED, meta.created_at))
    log.info("container %s (%s) created in sandbox %s", container_id[:13], meta_name, sandbox.id[:13])
    return container_id


def _container_pid_mode(ns: api_pb2.NamespaceOption, pod_ns: api_pb2.NamespaceOption) -> NamespaceMode:
    if ns.pid == api_pb2.TARGET:
        return NamespaceMode.TARGET
    if pod_ns.pid == api_pb2.NODE or ns.pid == api_pb2.NODE:
        return NamespaceMode.NODE
    if ns.pid == api_pb2.POD:
        return NamespaceMode.POD
    return NamespaceMode.CONTAINER


def _pod_hostname(sandbox: SandboxMeta) -> str:
    try:
        return (Path(sandbox.bundle) / "hostname").read_text().strip()
    except OSError:
        return ""


def pod_mounts(sandbox: SandboxMeta, config: api_pb2.ContainerConfig) -> list[Mount]:
    """The files every container of the pod shares: hosts, resolv.conf, hostname, /dev/shm."""
    bundle = Path(sandbox.bundle)
    readonly = config.linux.security_context.readonly_rootfs
    out = [
        Mount(container_path="/etc/hosts", host_path=str(bundle / "hosts"), readonly=readonly, follow_pod_userns=False),
        Mount(
            container_path="/etc/resolv.conf",
            host_path=str(bundle / "resolv.conf"),
            readonly=readonly,
            follow_pod_userns=False,
        ),
        Mount(
            container_path="/etc/hostname",
            host_path=str(bundle / "hostname"),
            readonly=readonly,
            follow_pod_userns=False,
        ),
    ]
    if sandbox.shm_path:
        out.append(Mount(container_path="/dev/shm", host_path=sandbox.shm_path, follow_pod_userns=False))
    return out


def _resources_json(res: api_pb2.LinuxContainerResources) -> dict[str, Any]:
    return _as_json(res)


def _mount_json(m: api_pb2.Mount) -> dict[str, Any]:
    return _as_json(m)


def _as_json(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    data: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return data
