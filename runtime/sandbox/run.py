"""RunPodSandbox: namespaces, network, the infra container, then the record.

Every step that creates something registers its undo; a failure anywhere
unwinds the steps done, in reverse, so nothing leaks (mount, netns, CNI
allocation, conmon, runc state, cgroup, directory).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
from contextlib import AsyncExitStack
from pathlib import Path

from crishim.cri_api import api_pb2
from crishim.oci.inputs import NamespaceMode, SandboxSpecInput
from crishim.runtime import convert, validate
from crishim.runtime import rootfs as rootfs_mount
from crishim.runtime.errors import AlreadyExists
from crishim.runtime.ids import new_id, now_ns
from crishim.runtime.mounts import mount_tmpfs, unmount
from crishim.runtime.oom import clamp_and_log
from crishim.runtime.sandbox import infra
from crishim.runtime.services import Services
from crishim.runtime.state.records import SANDBOX_READY, SandboxMeta
from crishim.runtime.state.store import sandbox_name_key

log = logging.getLogger("crishim.sandbox")

# api.proto: the kubelet asks -998 for sandboxes; see runtime/oom.py for the clamp.
SANDBOX_OOM_SCORE_ADJ = -998


async def run_pod_sandbox(svc: Services, config: api_pb2.PodSandboxConfig, runtime_handler: str) -> str:
    validate.sandbox_config(config)
    handler = svc.handler(runtime_handler)
    md = config.metadata
    name_key = sandbox_name_key(md.name, md.namespace, md.uid, md.attempt)
    async with svc.locks.hold("sandbox-name:" + name_key):
        existing = svc.state.find_sandbox_by_name(name_key)
        if existing is not None:
            raise AlreadyExists(
                f"pod sandbox {name_key!r} already exists as {existing.id}; "
                "remove it first or use another attempt number"
            )
        return await _create(svc, config, handler.name, name_key)


async def _create(svc: Services, config: api_pb2.PodSandboxConfig, handler_name: str, name_key: str) -> str:
    handler = svc.handler(handler_name)
    md = config.metadata
    linux = config.linux
    sc = linux.security_context
    ns = sc.namespace_options
    host_network = ns.network == api_pb2.NODE
    host_ipc = ns.ipc == api_pb2.NODE
    validate.sandbox_ipc_mode(ns, "config.linux.security_context.namespace_options")
    sysctls = validate.sysctls(
        linux.sysctls, host_network=host_network, host_ipc=host_ipc, field="config.linux.sysctls"
    )
    userns = convert.user_namespace(ns, "config.linux.security_context.namespace_options")
    if userns is not None:
        validate.user_namespace_support(handler.features, handler.name)
    seccomp = convert.seccomp_profile(
        sc.seccomp if sc.HasField("seccomp") else None, sc.seccomp_profile_path, "config.linux.security_context"
    )
    sandbox_id = new_id()
    bundle = svc.sandbox_dir(sandbox_id)
    image = svc.images.resolve(infra.sandbox_image_ref(svc))

    async with AsyncExitStack() as undo:
        bundle.mkdir(parents=True, mode=0o711)  # traversable by user-namespaced roots
        undo.push_async_callback(asyncio.to_thread, shutil.rmtree, bundle, True)
        if config.log_directory:
            await asyncio.to_thread(Path(config.log_directory).mkdir, parents=True, exist_ok=True)

        # /dev/shm shared by the pod's containers, unless the pod uses the host IPC.
        shm_path = ""
        if not host_ipc:
            shm = bundle / "shm"
            mount_tmpfs(shm)
            undo.callback(unmount, shm)
            shm_path = str(shm)

        # No hostname asked: the node's, as containerd and CRI-O do (a pod name may exceed 64 bytes).
        hostname = config.hostname or socket.gethostname()
        files = await infra.write_pod_files(svc, bundle, config, hostname, host_network)

        netns_path: str | None = None
        ip = ""
        additional_ips: tuple[str, ...] = ()
        if not host_network:
            netns_path, setup = await svc.network.setup(
                sandbox_id,
                pod_name=md.name,
                pod_namespace=md.namespace,
                pod_uid=md.uid,
                port_mappings=infra.port_mappings(config),
                dns=infra.dns_capability(config),
                bandwidth=infra.bandwidth_capability(config),
            )
            undo.push_async_callback(svc.network.remove_netns, netns_path)
            undo.push_async_callback(svc.network.teardown, sandbox_id, netns_path, md.name, md.namespace, md.uid)
            ip, additional_ips = setup.ip, tuple(setup.additional_ips)
            if ip:
                infra.write_hosts(files.hosts, hostname, ip)

        svc.images.acquire(image.id, f"sandbox:{sandbox_id}")
        undo.push_async_callback(svc.images.arelease, f"sandbox:{sandbox_id}")
        rootfs = bundle / "rootfs"
        await rootfs_mount.mount_image_rootfs(svc, image.id, rootfs, bundle)
        undo.callback(unmount, rootfs)

        cgroup_parent = linux.cgroup_parent
        cgroups_path = infra.cgroups_path(svc, cgroup_parent, sandbox_id)
        spec_input = SandboxSpecInput(
            id=sandbox_id,
            rootfs=str(rootfs),
            args=infra.pause_args(image.config),
            hostname=hostname if not host_network else "",
            netns_path=netns_path,
            ipc_mode=convert.NAMESPACE_MODES[ns.ipc],
            pid_mode=NamespaceMode.NODE if ns.pid == api_pb2.NODE else NamespaceMode.POD,
            shm_path=shm_path,
            # The pause process reads none of these; binding them would need mount points
            # in its image, which a user-namespaced root cannot create.
            resolv_conf_path="",
            hostname_path="",
            hosts_path="",
            sysctls=sysctls,
            cgroups_path=cgroups_path,
            oom_score_adj=clamp_and_log(SANDBOX_OOM_SCORE_ADJ),
            privileged=sc.privileged,
            readonly_rootfs=True,
            userns=userns,
            annotations=dict(config.annotations),
            resources=convert.resources(linux.resources) if linux.HasField("resources") else None,
            seccomp=seccomp,
        )
        spec = infra.build_spec(spec_input)
        await asyncio.to_thread((bundle / "config.json").write_text, json.dumps(spec))

        started = await infra.start_infra(svc, handler, sandbox_id, bundle, cgroups_path)
        undo.push_async_callback(infra.destroy_infra, svc, handler, sandbox_id)

        meta = SandboxMeta(
            id=sandbox_id,
            name=md.name,
            namespace=md.namespace,
            uid=md.uid,
            attempt=md.attempt,
            state=SANDBOX_READY,
            created_at=now_ns(),
            runtime_handler=handler.name,
            config=config.SerializeToString(),
            bundle=str(bundle),
            log_directory=config.log_directory,
            netns_path=netns_path or "",
            ip=ip,
            additional_ips=additional_ips,
            pid=started.pid,
            conmon_pid=started.conmon_pid,
            cgroup_parent=cgroup_parent,
            cgroups_path=cgroups_path,
            shm_path=shm_path,
            userns=userns is not None,
            labels=dict(config.labels),
            annotations=dict(config.annotations),
        )
        svc.state.add_sandbox(meta)
        undo.pop_all()
    log.info("sandbox %s (%s) ready, handler %s, ip %s", sandbox_id[:13], name_key, handler.name, ip or "host")
    return sandbox_id
