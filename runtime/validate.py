"""The CRI rules: every check of a request field that refuses it with INVALID_ARGUMENT.

The flows call these before they create anything, and convert.py calls them
while it turns messages into oci/ inputs; oci/ then trusts those inputs and
checks nothing twice. Each message names the field and says what to change.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from crishim.cri_api import api_pb2
from crishim.oci.features import RuntimeFeatures
from crishim.runtime import cpusets
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
    absolute_path(config.log_directory, "config.log_directory")


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
    path_inside(config.log_path, "config.log_path")


# The kubelet names absolute paths (the pod's log directory, host paths) and paths relative
# to them (a container's log path). A relative path would resolve against the daemon's
# working directory and a `..` would climb out of the directory the kubelet chose: nothing
# is created outside the configured roots and the paths the kubelet names.
def absolute_path(path: str, field: str) -> str:
    """`path` when it is absolute (or empty: not set)."""
    if path and not path.startswith("/"):
        raise InvalidArgument(f"{field} {path!r} must be absolute")
    return path


def path_inside(relative: str, field: str) -> str:
    """`relative` when, joined to its directory, it stays inside it."""
    normal = posixpath.normpath(relative.lstrip("/")) if relative else ""
    if normal == ".." or normal.startswith("../"):
        raise InvalidArgument(f"{field} {relative!r} climbs out of its directory with '..'")
    return relative


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
    absolute_path(mount.host_path, f"{field}.host_path")
    if mount.propagation not in api_pb2.MountPropagation.values():
        raise InvalidArgument(f"{field}.propagation {mount.propagation} is unknown")
    if mount.recursive_read_only:
        recursive_read_only(mount, field, supported=features.recursive_read_only, handler=handler)
    if (mount.uidMappings or mount.gidMappings) and not features.idmap_mounts:
        raise InvalidArgument(
            f"{field}: runtime handler {handler!r} does not support idmapped mounts ({mount.container_path!r}); "
            "use a handler whose Status advertises them"
        )


def image_volume(mount: api_pb2.Mount, field: str) -> None:
    """An image volume (KEP-4639) is mounted read-only, and the request has to say so."""
    if not mount.readonly:
        raise InvalidArgument(
            f"{field}.readonly is false for the image volume {mount.image.image!r} at "
            f"{mount.container_path!r}: image volumes are read-only; set readonly=true"
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
    absolute_path(dev.host_path, f"{field}.host_path")
    permissions = dev.permissions or "rwm"
    if set(permissions) - set("rwm"):
        raise InvalidArgument(f"{field}.permissions {permissions!r} may only hold r, w and m")


# -- resources: the ranges the kernel accepts, checked before any cgroup write ---------------
# A value outside them fails deep in the runtime's cgroup write with a bare EINVAL (or, for
# cpu.weight, a silent clamp on one cgroup version and a refusal on the other); refused here,
# the caller learns the field and the range. 0 means "not set" everywhere in CRI.
CPU_PERIOD_US = (1_000, 1_000_000)  # the CFS bandwidth period the kernel accepts
CPU_QUOTA_MIN_US = 1_000
CPU_SHARES = (2, 262_144)  # what cgroup v1 stores and v2's cpu.weight maps from
OOM_SCORE_ADJ = (-1000, 1000)
HUGEPAGES = Path("/sys/kernel/mm/hugepages")
UNIFIED_KEY = re.compile(r"^[a-z0-9_]+\.[a-z0-9_.]+$")


def supported_page_sizes(root: Path = HUGEPAGES) -> set[str]:
    """The node's huge page sizes as CRI and the cgroup files name them: hugepages-2048kB -> 2MB."""
    sizes: set[str] = set()
    try:
        entries = [p.name for p in root.iterdir()]
    except OSError:
        return sizes
    for name in entries:
        kib = name.removeprefix("hugepages-").removesuffix("kB")
        if kib.isdigit():
            size = int(kib)
            sizes.add(
                f"{size // (1024 * 1024)}GB"
                if size >= 1024 * 1024
                else f"{size // 1024}MB"
                if size >= 1024
                else f"{size}KB"
            )
    return sizes


def _range(value: int, bounds: tuple[int, int], field: str, unit: str = "") -> None:
    low, high = bounds
    if value and not low <= value <= high:
        raise InvalidArgument(f"{field} {value} is outside {low}..{high}{unit} (0 leaves it unset)")


def resources(res: api_pb2.LinuxContainerResources, field: str) -> None:
    """InvalidArgument naming the first field of `res` the kernel would refuse."""
    _range(res.cpu_period, CPU_PERIOD_US, f"{field}.cpu_period", " microseconds")
    if res.cpu_quota not in (0, -1) and res.cpu_quota < CPU_QUOTA_MIN_US:
        raise InvalidArgument(
            f"{field}.cpu_quota {res.cpu_quota} is below the kernel's {CPU_QUOTA_MIN_US} microseconds "
            "(-1: unlimited, 0: unset)"
        )
    _range(res.cpu_shares, CPU_SHARES, f"{field}.cpu_shares")
    _range(res.oom_score_adj, OOM_SCORE_ADJ, f"{field}.oom_score_adj")
    if res.memory_limit_in_bytes < 0:
        raise InvalidArgument(f"{field}.memory_limit_in_bytes {res.memory_limit_in_bytes} is negative (0: unset)")
    swap = res.memory_swap_limit_in_bytes
    if swap < -1:
        raise InvalidArgument(f"{field}.memory_swap_limit_in_bytes {swap} is below -1 (-1: unlimited, 0: unset)")
    if swap > 0 and res.memory_limit_in_bytes == 0:
        raise InvalidArgument(
            f"{field}.memory_swap_limit_in_bytes {swap} needs memory_limit_in_bytes: it counts memory plus swap"
        )
    if swap > 0 and swap < res.memory_limit_in_bytes:
        raise InvalidArgument(
            f"{field}.memory_swap_limit_in_bytes {swap} is below memory_limit_in_bytes "
            f"{res.memory_limit_in_bytes}: it counts memory plus swap"
        )
    cpusets.check(res.cpuset_cpus, f"{field}.cpuset_cpus", memory_nodes=False)
    cpusets.check(res.cpuset_mems, f"{field}.cpuset_mems", memory_nodes=True)
    sizes = supported_page_sizes()
    for limit in res.hugepage_limits:
        if limit.page_size not in sizes:
            raise InvalidArgument(
                f"{field}.hugepage_limits page_size {limit.page_size!r} is not a huge page size of this node "
                f"(it has {', '.join(sorted(sizes)) or 'none'})"
            )
    for key, value in res.unified.items():
        if not UNIFIED_KEY.match(key):
            raise InvalidArgument(f"{field}.unified key {key!r} is not a cgroup v2 file name such as memory.high")
        if "\n" in value:
            raise InvalidArgument(f"{field}.unified[{key!r}] holds a newline: one value per file")
