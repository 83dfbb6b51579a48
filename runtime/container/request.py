"""CreateContainer's request, checked and converted before anything is made for it.

`checked_request` applies the CRI rules and resolves what the request names
(its sandbox's handler, its image, a TARGET container); `spec_input` turns it
into the oci/ input. Both only read, so a refusal here has nothing to undo;
create.py then does the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crishim.cgroups.paths import container_cgroups_path
from crishim.cri_api import api_pb2
from crishim.images import errors as image_errors
from crishim.images.records import ImageRecord
from crishim.oci.inputs import ContainerSpecInput, Device, Mount, NamespaceMode, UserNamespace
from crishim.runtime import convert, validate
from crishim.runtime.errors import InvalidArgument, NotFound
from crishim.runtime.oom import clamp_and_log
from crishim.runtime.services import Handler, Services
from crishim.runtime.state.records import SandboxMeta

SECURITY_CONTEXT = "config.linux.security_context"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    """A CreateContainer request after the CRI rules, with what it names resolved.

    `binds` follows config.mounts: the converted host-path mount, or None for an
    image volume (mounted by create.py, since that needs the container's bundle).
    """

    config: api_pb2.ContainerConfig
    sandbox: SandboxMeta
    pod_config: api_pb2.PodSandboxConfig
    handler: Handler
    image_set: str
    image: ImageRecord
    userns: UserNamespace | None
    binds: tuple[Mount | None, ...]
    devices: tuple[Device, ...]
    target_pid: int | None

    @property
    def image_config(self) -> dict[str, Any]:
        """The image's runtime config (Entrypoint, Cmd, Env, User, WorkingDir)."""
        config: dict[str, Any] = (self.image.config or {}).get("config") or {}
        return config


def checked_request(svc: Services, sandbox: SandboxMeta, config: api_pb2.ContainerConfig) -> ContainerRequest:
    handler = svc.handler(sandbox.runtime_handler)
    image_set = svc.images.image_set(handler.name)  # KEP-4216: the handler's own images, if separate
    image = resolve_image(svc, config.image.image, image_set)
    pod_config = api_pb2.PodSandboxConfig.FromString(sandbox.config)
    pod_sc = pod_config.linux.security_context
    # Checked when the pod ran; converted again here from the pod's stored config.
    userns = convert.user_namespace(pod_sc.namespace_options, "sandbox namespace_options")
    validate.privileged(config.linux.security_context, pod_sc.privileged, userns is not None, SECURITY_CONTEXT)
    validate.mount_paths(config.mounts, "config.mounts")
    binds = tuple(checked_mount(m, f"config.mounts[{i}]", handler) for i, m in enumerate(config.mounts))
    devices = tuple(convert.device(d, f"config.devices[{i}]") for i, d in enumerate(config.devices))
    target_pid = target_container_pid(svc, sandbox, config.linux.security_context.namespace_options)
    return ContainerRequest(config, sandbox, pod_config, handler, image_set, image, userns, binds, devices, target_pid)


def resolve_image(svc: Services, ref: str, image_set: str) -> ImageRecord:
    try:
        return svc.images.resolve(ref, image_set)
    except image_errors.NotFound as exc:
        raise NotFound(f"image {ref!r} is not present; pull it first (crictl pull {ref})") from exc


def is_image_volume(mount: api_pb2.Mount) -> bool:
    return mount.HasField("image") and bool(mount.image.image)


def checked_mount(mount: api_pb2.Mount, field: str, handler: Handler) -> Mount | None:
    """A host-path mount converted for oci/, or None for an image volume (create.py mounts it)."""
    if is_image_volume(mount):
        validate.image_volume(mount, field)
        return None
    return convert.bind_mount(mount, field, features=handler.features, handler=handler.name)


def target_container_pid(svc: Services, sandbox: SandboxMeta, ns: api_pb2.NamespaceOption) -> int | None:
    """The PID whose namespaces TARGET mode joins (ephemeral containers), None without TARGET."""
    if api_pb2.TARGET not in (ns.pid, ns.network, ns.ipc):
        return None
    field = f"{SECURITY_CONTEXT}.namespace_options.target_id"
    if not ns.target_id:
        raise InvalidArgument(f"{field} is empty but a namespace mode is TARGET")
    target = svc.state.containers.get(ns.target_id).meta
    if target.sandbox_id != sandbox.id or not target.pid:
        raise InvalidArgument(f"{field} {ns.target_id} is not a running container of this pod")
    return target.pid


def spec_input(svc: Services, request: ContainerRequest, container_id: str, rootfs: Path) -> ContainerSpecInput:
    """The oci/ input; its mounts are the pod's files and binds (create.py adds image volumes)."""
    config, sandbox, image_cfg = request.config, request.sandbox, request.image_config
    linux = config.linux
    sc = linux.security_context
    pod_ns = request.pod_config.linux.security_context.namespace_options
    has_resources = linux.HasField("resources")
    return ContainerSpecInput(
        id=container_id,
        rootfs=str(rootfs),
        args=image_args(config, image_cfg),
        env=merged_env(config, image_cfg),
        cwd=config.working_dir or image_cfg.get("WorkingDir") or "/",
        user=convert.user_spec(sc, image_cfg.get("User", ""), SECURITY_CONTEXT),
        hostname=pod_hostname(sandbox),
        tty=config.tty,
        stdin=config.stdin,
        sandbox_pid=sandbox.pid or None,
        netns_path=sandbox.netns_path or None,
        pod_namespaces=dict(sandbox.namespace_paths),
        network_mode=NamespaceMode.NODE if pod_ns.network == api_pb2.NODE else NamespaceMode.POD,
        pid_mode=container_pid_mode(sc.namespace_options, pod_ns, pod_has_pid_namespace=bool(sandbox.pid)),
        ipc_mode=NamespaceMode.NODE if pod_ns.ipc == api_pb2.NODE else NamespaceMode.POD,
        target_pid=request.target_pid,
        userns=request.userns,
        mounts=tuple(pod_mounts(sandbox, config)),
        devices=request.devices,
        resources=convert.resources(linux.resources) if has_resources else None,
        cgroups_path=container_cgroups_path(request.pod_config.linux.cgroup_parent, container_id, svc.cgroup_driver),
        oom_score_adj=clamp_and_log(linux.resources.oom_score_adj) if has_resources else None,
        annotations=dict(config.annotations),
        privileged=sc.privileged,
        capabilities_add=tuple(sc.capabilities.add_capabilities),
        capabilities_drop=tuple(sc.capabilities.drop_capabilities),
        capabilities_ambient=tuple(sc.capabilities.add_ambient_capabilities),
        no_new_privs=sc.no_new_privs,
        readonly_rootfs=sc.readonly_rootfs,
        # proto3 cannot tell an empty list from an absent one: empty keeps our defaults.
        masked_paths=tuple(sc.masked_paths) if sc.masked_paths else None,
        readonly_paths=tuple(sc.readonly_paths) if sc.readonly_paths else None,
        seccomp=convert.seccomp_profile(
            sc.seccomp if sc.HasField("seccomp") else None, sc.seccomp_profile_path, SECURITY_CONTEXT
        ),
        apparmor=convert.apparmor_profile(
            sc.apparmor if sc.HasField("apparmor") else None, sc.apparmor_profile, SECURITY_CONTEXT
        ),
        features=request.handler.features,
    )


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
    env.setdefault("PATH", DEFAULT_PATH)
    return tuple(f"{k}={v}" for k, v in env.items())


def container_pid_mode(
    ns: api_pb2.NamespaceOption, pod_ns: api_pb2.NamespaceOption, *, pod_has_pid_namespace: bool = True
) -> NamespaceMode:
    """The container's PID namespace mode.

    POD (the proto's default, so what a bare config asks) joins the infra process's
    PID namespace. A pod without one does not share its PID namespace, so there the
    container gets its own, as the kubelet asks for such a pod's containers anyway.
    """
    if ns.pid == api_pb2.TARGET:
        return NamespaceMode.TARGET
    if pod_ns.pid == api_pb2.NODE or ns.pid == api_pb2.NODE:
        return NamespaceMode.NODE
    if ns.pid == api_pb2.POD and pod_has_pid_namespace:
        return NamespaceMode.POD
    return NamespaceMode.CONTAINER


def pod_hostname(sandbox: SandboxMeta) -> str:
    try:
        return (Path(sandbox.bundle) / "hostname").read_text().strip()
    except OSError:
        return ""


def pod_mounts(sandbox: SandboxMeta, config: api_pb2.ContainerConfig) -> list[Mount]:
    """The files every container of the pod shares: hosts, resolv.conf, hostname, /dev/shm."""
    bundle = Path(sandbox.bundle)
    readonly = config.linux.security_context.readonly_rootfs
    out = [
        Mount(container_path=dest, host_path=str(bundle / name), readonly=readonly, follow_pod_userns=False)
        for dest, name in (("/etc/hosts", "hosts"), ("/etc/resolv.conf", "resolv.conf"), ("/etc/hostname", "hostname"))
    ]
    if sandbox.shm_path:
        out.append(Mount(container_path="/dev/shm", host_path=sandbox.shm_path, follow_pod_userns=False))
    return out
