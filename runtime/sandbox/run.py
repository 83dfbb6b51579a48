"""RunPodSandbox: name, checks, namespaces, network, the infra container or pins, then the record.

The name is reserved first and every rule checked before anything is made.
Then every step that creates something registers its undo; a failure anywhere
unwinds the steps done, in reverse, so nothing leaks (mount, netns, CNI
allocation, conmon, runc state, cgroup, directory).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from crishim.cgroups.paths import container_cgroups_path
from crishim.cri_api import api_pb2
from crishim.images.records import ImageRecord
from crishim.oci.inputs import NamespaceMode, SandboxSpecInput, SeccompProfile, UserNamespace
from crishim.runtime import convert, validate
from crishim.runtime import rootfs as rootfs_mount
from crishim.runtime.ids import new_id, now_ns
from crishim.runtime.mounts import mount_tmpfs, unmount
from crishim.runtime.network.cni import PodRef, RuntimeOptions
from crishim.runtime.nri import steps as nri_steps
from crishim.runtime.oom import clamp_and_log
from crishim.runtime.sandbox import holder, infra, pinned
from crishim.runtime.services import Handler, Services
from crishim.runtime.state.records import SandboxMeta, SandboxStatus
from crishim.runtime.state.store import sandbox_name_key

log = logging.getLogger("crishim.sandbox")

# api.proto: the kubelet asks -998 for sandboxes; see runtime/oom.py for the clamp.
SANDBOX_OOM_SCORE_ADJ = -998
SECURITY_CONTEXT = "config.linux.security_context"


@dataclass(frozen=True, slots=True)
class PodRequest:
    """A RunPodSandbox request after the CRI rules: what the steps below build from."""

    config: api_pb2.PodSandboxConfig
    handler: Handler
    host_network: bool
    host_ipc: bool
    sysctls: dict[str, str]
    userns: UserNamespace | None
    seccomp: SeccompProfile


@dataclass(frozen=True, slots=True)
class PodAddress:
    """The pod's network: its pinned netns (None on the host network) and addresses."""

    netns_path: str | None = None
    ip: str = ""
    additional_ips: tuple[str, ...] = ()


async def run_pod_sandbox(svc: Services, config: api_pb2.PodSandboxConfig, runtime_handler: str) -> str:
    validate.sandbox_config(config)
    handler = svc.handler(runtime_handler)
    md = config.metadata
    name_key = sandbox_name_key(md.name, md.namespace, md.uid, md.attempt)
    sandbox_id = new_id()
    with svc.names.reserved(name_key, sandbox_id, f"pod sandbox {name_key!r}", lambda: _recorded_id(svc, name_key)):
        pod = checked_request(config, handler)
        meta = await _create(svc, pod, sandbox_id)
    log.info("sandbox %s (%s) ready, handler %s, ip %s", sandbox_id[:13], name_key, handler.name, meta.ip or "host")
    return sandbox_id


def _recorded_id(svc: Services, name_key: str) -> str | None:
    existing = svc.state.sandboxes.find_by_name(name_key)
    return None if existing is None else existing.meta.id


def checked_request(config: api_pb2.PodSandboxConfig, handler: Handler) -> PodRequest:
    """Every rule the request must meet, checked before anything is created."""
    sc = config.linux.security_context
    ns = sc.namespace_options
    validate.sandbox_ipc_mode(ns, f"{SECURITY_CONTEXT}.namespace_options")
    host_network, host_ipc = ns.network == api_pb2.NODE, ns.ipc == api_pb2.NODE
    sysctls = validate.sysctls(
        config.linux.sysctls, host_network=host_network, host_ipc=host_ipc, field="config.linux.sysctls"
    )
    userns = convert.user_namespace(ns, f"{SECURITY_CONTEXT}.namespace_options")
    if userns is not None:
        validate.user_namespace_support(handler.features, handler.name)
    seccomp = convert.seccomp_profile(
        sc.seccomp if sc.HasField("seccomp") else None, sc.seccomp_profile_path, SECURITY_CONTEXT
    )
    return PodRequest(config, handler, host_network, host_ipc, sysctls, userns, seccomp)


async def _create(svc: Services, pod: PodRequest, sandbox_id: str) -> SandboxMeta:
    bundle = svc.sandbox_dir(sandbox_id)
    async with AsyncExitStack() as undo:
        bundle.mkdir(parents=True, mode=0o711)  # traversable by user-namespaced roots
        undo.push_async_callback(asyncio.to_thread, shutil.rmtree, bundle, True)
        if pod.config.log_directory:
            await asyncio.to_thread(Path(pod.config.log_directory).mkdir, parents=True, exist_ok=True)
        # The namespace is made in a thread of its own while the files and the rootfs are.
        netns_made = None if pod.host_network else pod_netns(svc, undo, sandbox_id)
        shm_path = "" if pod.host_ipc else pod_shm(undo, bundle)
        # No hostname asked: the node's, as containerd and CRI-O do (a pod name may exceed 64 bytes).
        hostname = pod.config.hostname or socket.gethostname()
        files = await infra.write_pod_files(svc, bundle, pod.config, hostname, pod.host_network)
        if needs_infra_container(svc, pod):
            holding = await _infra_container(svc, undo, pod, sandbox_id, bundle, hostname, netns_made, shm_path)
        else:
            holding = await _pinned_namespaces(svc, undo, pod, sandbox_id, bundle, hostname, netns_made)
        # The namespaces need not have their interfaces: CNI ADD runs beside the steps that
        # hold them (conmon's `runc create` and `runc start`, the longest steps here).
        if holding.netns_path is None:
            address, holder = PodAddress(), await holding.holder
        else:
            network = pod_network(svc, undo, sandbox_id, holding.netns_path, pod.config)
            address, holder = await _beside(network, holding.holder)
        if address.ip:
            infra.write_hosts(files.hosts, hostname, address.ip)
        meta = sandbox_record(pod, sandbox_id, bundle, address, holder, shm_path)
        # Until the plugins accept it the pod is not stored, so neither listed nor usable.
        async with svc.nri.creating():
            await nri_steps.run_pod_sandbox(svc, meta)
            svc.state.sandboxes.add(meta, SandboxStatus())
        undo.pop_all()
    return meta


def needs_infra_container(svc: Services, pod: PodRequest) -> bool:
    """Whether the pod needs a pause container, or its namespaces can be pinned without one.

    A user-namespaced pod needs one whose user namespace the containers join, since
    runc makes it. Every other pod pins what it holds; one whose containers share a PID
    namespace gets a process of its own to hold it (and to reap orphans, as PID 1),
    where the node can run one (runtime/sandbox/pidholder.py).
    """
    if not svc.config.drop_infra_container or pod.userns is not None:
        return True
    return shares_pid_namespace(pod) and svc.pid_holder is None


def shares_pid_namespace(pod: PodRequest) -> bool:
    return pod.config.linux.security_context.namespace_options.pid == api_pb2.POD


@dataclass(frozen=True, slots=True)
class PodHolder:
    """What holds the pod's namespaces: its infra container's processes, or pins."""

    pid: int = 0
    conmon_pid: int = 0
    cgroups_path: str = ""
    infra_container: bool = True
    namespace_paths: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Holding:
    """The pod's netns (None: host network) and the holder being made, to await beside CNI ADD."""

    netns_path: str | None
    holder: Awaitable[PodHolder]


async def _infra_container(
    svc: Services,
    undo: AsyncExitStack,
    pod: PodRequest,
    sandbox_id: str,
    bundle: Path,
    hostname: str,
    netns_made: asyncio.Task[str] | None,
    shm_path: str,
) -> Holding:
    """The pause container's rootfs and spec; its start is returned to run beside CNI ADD."""
    image = svc.images.resolve(infra.sandbox_image_ref(svc))
    rootfs = await infra_rootfs(svc, undo, image, sandbox_id, bundle)
    netns_path = None if netns_made is None else await netns_made
    spec_input = sandbox_spec_input(svc, pod, sandbox_id, rootfs, image, hostname, PodAddress(netns_path), shm_path)
    spec = infra.build_spec(spec_input)
    await asyncio.to_thread((bundle / "config.json").write_text, json.dumps(spec))
    undo.push_async_callback(infra.destroy_infra, svc, pod.handler, sandbox_id)

    async def start() -> PodHolder:
        started = await infra.start_infra(svc, pod.handler, sandbox_id, bundle, spec_input.cgroups_path)
        return PodHolder(started.pid, started.conmon_pid, spec_input.cgroups_path)

    return Holding(netns_path, start())


async def _pinned_namespaces(
    svc: Services,
    undo: AsyncExitStack,
    pod: PodRequest,
    sandbox_id: str,
    bundle: Path,
    hostname: str,
    netns_made: asyncio.Task[str] | None,
) -> Holding:
    """The pod's own IPC and UTS namespaces, pinned, with its hostname and sysctls set in them;
    and the holder of its PID namespace if its containers share one."""
    netns_path = None if netns_made is None else await netns_made
    kinds = tuple(kind for kind, host in (("ipc", pod.host_ipc), ("uts", pod.host_network)) if not host)
    wanted = pinned.PodNamespaces(bundle / pinned.PIN_DIR, kinds, hostname, netns_path, pod.sysctls)
    undo.callback(pinned.unpin, pinned.pin_paths(wanted.directory, kinds))
    if not shares_pid_namespace(pod):

        async def pin() -> PodHolder:
            return PodHolder(infra_container=False, namespace_paths=await pinned.pin(wanted))

        return Holding(netns_path, pin())
    assert svc.pid_holder is not None  # needs_infra_container() said so
    cgroups_path = container_cgroups_path(pod.config.linux.cgroup_parent, sandbox_id, svc.cgroup_driver)
    place = holder.placement(svc, sandbox_id, cgroups_path)
    request = pinned.HolderRequest(svc.pid_holder, sandbox_id, bundle / HOLDER_LOG, place)
    started = pinned.start_pin_and_hold(wanted, request)

    async def end_holder() -> None:
        try:
            _, held = await asyncio.wrap_future(started)
        except Exception:  # noqa: BLE001 - nothing was left running; a placement cut short may leave its cgroup
            await holder.remove_cgroup(svc, cgroups_path)
            return
        await holder.release(svc, sandbox_id, held, cgroups_path)

    undo.push_async_callback(end_holder)

    async def pin_and_hold() -> PodHolder:
        paths, held = await pinned.pin_and_hold(started)
        svc.monitor.watch(sandbox_id, held.parent_pid)
        return PodHolder(held.pid, held.parent_pid, cgroups_path, infra_container=False, namespace_paths=paths)

    return Holding(netns_path, pin_and_hold())


HOLDER_LOG = "pid-holder.log"


def pod_shm(undo: AsyncExitStack, bundle: Path) -> str:
    """The /dev/shm tmpfs the pod's containers share (unless the pod uses the host IPC)."""
    shm = bundle / "shm"
    mount_tmpfs(shm)
    undo.callback(unmount, shm)
    return str(shm)


def pod_netns(svc: Services, undo: AsyncExitStack, sandbox_id: str) -> asyncio.Task[str]:
    """The pod's pinned netns, made beside the steps that follow; its path once awaited.

    The undo waits for the making to end, whatever its caller awaited, and unpins what
    was made (a failed making leaves nothing pinned).
    """
    made = asyncio.ensure_future(svc.network.create_netns(sandbox_id))

    async def unpin() -> None:
        try:
            netns_path = await made
        except (Exception, asyncio.CancelledError):
            return
        await svc.network.remove_netns(netns_path)

    undo.push_async_callback(unpin)
    return made


async def pod_network(
    svc: Services, undo: AsyncExitStack, sandbox_id: str, netns_path: str, config: api_pb2.PodSandboxConfig
) -> PodAddress:
    """CNI ADD into the pinned netns (a failed ADD undoes itself); undone by CNI DEL."""
    md = config.metadata
    setup = await svc.network.attach(
        netns_path,
        PodRef(sandbox_id, md.name, md.namespace, md.uid),
        RuntimeOptions(
            port_mappings=tuple(infra.port_mappings(config)),
            dns=infra.dns_capability(config),
            bandwidth=infra.bandwidth_capability(config),
        ),
    )
    undo.push_async_callback(svc.network.teardown, sandbox_id, netns_path, md.name, md.namespace, md.uid)
    return PodAddress(netns_path, setup.ip, tuple(setup.additional_ips))


async def _beside(network: Awaitable[PodAddress], holder: Awaitable[PodHolder]) -> tuple[PodAddress, PodHolder]:
    """Both steps to their end, even when one fails, so the undo that follows never races one
    still running; the first failure is then raised."""
    address, held = await asyncio.gather(network, holder, return_exceptions=True)
    for outcome in (address, held):
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(address, PodAddress)
    assert isinstance(held, PodHolder)
    return address, held


async def infra_rootfs(svc: Services, undo: AsyncExitStack, image: ImageRecord, sandbox_id: str, bundle: Path) -> Path:
    """The pause image's overlay; its lease first, so RemoveImage cannot take the layers meanwhile."""
    svc.images.acquire(image.id, f"sandbox:{sandbox_id}")
    undo.push_async_callback(svc.images.arelease, f"sandbox:{sandbox_id}")
    rootfs = bundle / "rootfs"
    await rootfs_mount.mount_image_rootfs(svc, image.id, rootfs, bundle)
    undo.callback(unmount, rootfs)
    return rootfs


def sandbox_spec_input(
    svc: Services,
    pod: PodRequest,
    sandbox_id: str,
    rootfs: Path,
    image: ImageRecord,
    hostname: str,
    address: PodAddress,
    shm_path: str,
) -> SandboxSpecInput:
    linux = pod.config.linux
    ns = linux.security_context.namespace_options
    return SandboxSpecInput(
        id=sandbox_id,
        rootfs=str(rootfs),
        args=infra.pause_args(image.config),
        hostname=hostname if not pod.host_network else "",
        netns_path=address.netns_path,
        ipc_mode=convert.NAMESPACE_MODES[ns.ipc],
        pid_mode=NamespaceMode.NODE if ns.pid == api_pb2.NODE else NamespaceMode.POD,
        shm_path=shm_path,
        # The pause process reads none of these; binding them would need mount points
        # in its image, which a user-namespaced root cannot create.
        resolv_conf_path="",
        hostname_path="",
        hosts_path="",
        sysctls=pod.sysctls,
        cgroups_path=container_cgroups_path(linux.cgroup_parent, sandbox_id, svc.cgroup_driver),
        oom_score_adj=clamp_and_log(SANDBOX_OOM_SCORE_ADJ),
        privileged=linux.security_context.privileged,
        readonly_rootfs=True,
        userns=pod.userns,
        annotations=dict(pod.config.annotations),
        resources=convert.resources(linux.resources) if linux.HasField("resources") else None,
        seccomp=pod.seccomp,
    )


def sandbox_record(
    pod: PodRequest,
    sandbox_id: str,
    bundle: Path,
    address: PodAddress,
    holder: PodHolder,
    shm_path: str,
) -> SandboxMeta:
    config, md = pod.config, pod.config.metadata
    return SandboxMeta(
        id=sandbox_id,
        name=md.name,
        namespace=md.namespace,
        uid=md.uid,
        attempt=md.attempt,
        created_at=now_ns(),
        runtime_handler=pod.handler.name,
        config=config.SerializeToString(),
        bundle=str(bundle),
        log_directory=config.log_directory,
        netns_path=address.netns_path or "",
        ip=address.ip,
        additional_ips=address.additional_ips,
        pid=holder.pid,
        conmon_pid=holder.conmon_pid,
        cgroup_parent=config.linux.cgroup_parent,
        cgroups_path=holder.cgroups_path,
        shm_path=shm_path,
        userns=pod.userns is not None,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        infra_container=holder.infra_container,
        namespace_paths=dict(holder.namespace_paths),
    )
