"""The CRI rules: every check of a request field that refuses it with INVALID_ARGUMENT.

The flows call these before they create anything, and convert.py calls them
while it turns messages into oci/ inputs; oci/ then trusts those inputs and
checks nothing twice. Each message names the field and says what to change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from crishim.cri_api import api_pb2
from crishim.oci.features import RuntimeFeatures
from crishim.runtime.errors import InvalidArgument

# The sysctls a pod may set: those the kernel keeps per namespace *and* runc and crun
# agree to write. kernel.{msg,sem,shm}_next_id are per IPC namespace too (ipc_sysctl.c),
# but both runtimes refuse them ("not in a separate kernel namespace" / "not namespaced"),
# so accepting them would only move the refusal after the infra container's setup.
IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
IPC_SYSCTL_PREFIX = "fs.mqueue."
NET_SYSCTL_PREFIX = "net."
UTS_SYSCTLS = frozenset({"kernel.hostname", "kernel.domainname"})
IPC_ID_SYSCTLS = frozenset({"kernel.msg_next_id", "kernel.sem_next_id", "kernel.shm_next_id"})


def sysctl_namespace(key: str) -> str | None:
    """ "ipc", "net" or "uts": the namespace that scopes `key` (dotted form), None if host-wide."""
    if key in IPC_SYSCTLS or key.startswith(IPC_SYSCTL_PREFIX):
        return "ipc"
    if key.startswith(NET_SYSCTL_PREFIX):
        return "net"
    if key in UTS_SYSCTLS:
        return "uts"
    return None


def sysctls(wanted: Mapping[str, str], *, host_network: bool, host_ipc: bool, field: str) -> dict[str, str]:
    """The pod's sysctls in dotted form, each in a namespace of the pod's own."""
    checked: dict[str, str] = {}
    for raw_key, value in wanted.items():
        key = raw_key.replace("/", ".")
        namespace = sysctl_namespace(key)
        if namespace is None:
            if key in IPC_ID_SYSCTLS:
                raise InvalidArgument(
                    f"{field}: sysctl {raw_key!r} cannot be set: runc and crun refuse the IPC ID allocators"
                )
            raise InvalidArgument(
                f"{field}: sysctl {raw_key!r} is not namespaced: it would change the whole node; a pod may set "
                f"{', '.join(sorted(IPC_SYSCTLS))}, fs.mqueue.*, net.*, kernel.hostname and kernel.domainname"
            )
        if namespace == "ipc" and host_ipc:
            raise InvalidArgument(f"{field}: sysctl {raw_key!r} is not allowed with host IPC")
        if namespace in ("net", "uts") and host_network:
            # A host-network pod has the host's UTS namespace as well.
            raise InvalidArgument(f"{field}: sysctl {raw_key!r} is not allowed with host network")
        checked[key] = value
    return checked


def sandbox_config(config: api_pb2.PodSandboxConfig) -> None:
    """The metadata every pod needs; its parts become directory and name-key parts."""
    if not config.HasField("metadata"):
        raise InvalidArgument("config.metadata is required (name, uid, namespace, attempt)")
    md = config.metadata
    if not md.name:
        raise InvalidArgument("config.metadata.name is empty")
    for key in ("name", "namespace", "uid"):
        if "/" in getattr(md, key) or "\x00" in getattr(md, key):
            raise InvalidArgument(f"config.metadata.{key} must not contain '/' or NUL")


def sandbox_ipc_mode(options: api_pb2.NamespaceOption, field: str) -> None:
    """A pod holds its own IPC namespace or shares the host's; nothing else has one to give."""
    if options.ipc not in (api_pb2.POD, api_pb2.NODE):
        mode = api_pb2.NamespaceMode.Name(options.ipc)
        raise InvalidArgument(f"{field}.ipc {mode} is not supported for a pod sandbox; use POD or NODE")


def container_config(config: api_pb2.ContainerConfig) -> None:
    if not config.HasField("metadata") or not config.metadata.name:
        raise InvalidArgument("config.metadata.name is empty: every container needs a name")
    if "/" in config.metadata.name:
        raise InvalidArgument("config.metadata.name must not contain '/'")
    if not config.HasField("image") or not config.image.image:
        raise InvalidArgument("config.image.image is empty: name the image to run")


def user_namespace_options(userns: api_pb2.UserNamespace, field: str) -> None:
    """KEP-127 user namespaces: POD mode with exactly one uid and one gid mapping from container root."""
    if userns.mode not in (api_pb2.POD, api_pb2.NODE):
        mode = api_pb2.NamespaceMode.Name(userns.mode)
        raise InvalidArgument(f"{field}.userns_options.mode {mode} is not supported; use POD or NODE")
    if userns.mode == api_pb2.NODE:
        return
    if len(userns.uids) != 1 or len(userns.gids) != 1:
        raise InvalidArgument(
            f"{field}.userns_options: exactly one uid and one gid mapping are supported, "
            f"got {len(userns.uids)} and {len(userns.gids)}"
        )
    for kind, mapping in (("uid", userns.uids[0]), ("gid", userns.gids[0])):
        if mapping.container_id != 0:
            raise InvalidArgument(f"{field}.userns_options: the {kind} mapping must start at container ID 0")
        if mapping.length == 0:
            raise InvalidArgument(f"{field}.userns_options: the {kind} mapping has length 0")


def user_namespace_support(features: RuntimeFeatures, handler: str) -> None:
    if not features.user_namespaces:
        raise InvalidArgument(
            f"runtime handler {handler!r} does not support user namespaces; use a handler whose Status "
            "advertises them, or drop userns_options"
        )


def privileged(sc: api_pb2.LinuxContainerSecurityContext, pod_privileged: bool, pod_userns: bool, field: str) -> None:
    if not sc.privileged:
        return
    if not pod_privileged:
        raise InvalidArgument(f"{field}.privileged needs a privileged pod sandbox")
    if pod_userns:
        raise InvalidArgument(f"{field}.privileged: a privileged container cannot run in a pod user namespace")


def mount_paths(mounts: Iterable[api_pb2.Mount], field: str) -> None:
    """Every mount, bind or image volume, lands at an absolute path in the container."""
    for i, mount in enumerate(mounts):
        if not mount.container_path:
            raise InvalidArgument(f"{field}[{i}].container_path is empty")
        if not mount.container_path.startswith("/"):
            raise InvalidArgument(f"{field}[{i}].container_path {mount.container_path!r} must be absolute")


def bind_mount(mount: api_pb2.Mount, field: str, *, features: RuntimeFeatures, handler: str) -> None:
    """A host-path mount: an absolute source, a known propagation, what the handler can do."""
    if not mount.host_path:
        raise InvalidArgument(f"{field}.host_path is empty for {mount.container_path!r}")
    if not mount.host_path.startswith("/"):
        raise InvalidArgument(f"{field}.host_path {mount.host_path!r} must be absolute")
    if mount.propagation not in api_pb2.MountPropagation.values():
        raise InvalidArgument(f"{field}.propagation {mount.propagation} is unknown")
    if mount.recursive_read_only:
        recursive_read_only(mount, field, supported=features.recursive_read_only, handler=handler)
    if (mount.uidMappings or mount.gidMappings) and not features.idmap_mounts:
        raise InvalidArgument(
            f"{field}: runtime handler {handler!r} does not support idmapped mounts ({mount.container_path!r}); "
            "use a handler whose Status advertises them"
        )


def recursive_read_only(mount: api_pb2.Mount, field: str, *, supported: bool, handler: str) -> None:
    """rro (KEP-3857) is read-only all the way down: readonly, private, and a handler that does it."""
    if not mount.readonly:
        raise InvalidArgument(f"{field}: recursive_read_only needs readonly=true ({mount.container_path!r})")
    if mount.propagation != api_pb2.PROPAGATION_PRIVATE:
        propagation = api_pb2.MountPropagation.Name(mount.propagation)
        raise InvalidArgument(
            f"{field}: recursive_read_only needs PROPAGATION_PRIVATE, not {propagation} ({mount.container_path!r})"
        )
    if not supported:
        raise InvalidArgument(
            f"{field}: runtime handler {handler!r} does not support recursive read-only mounts "
            f"({mount.container_path!r}); use a handler whose Status advertises them"
        )


def device(dev: api_pb2.Device, field: str) -> None:
    if not dev.host_path:
        raise InvalidArgument(f"{field}.host_path is empty")
    permissions = dev.permissions or "rwm"
    if set(permissions) - set("rwm"):
        raise InvalidArgument(f"{field}.permissions {permissions!r} may only hold r, w and m")
