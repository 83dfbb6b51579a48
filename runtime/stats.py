"""Container and pod stats from cgroups, writable layers and the pod's netns, and the
cAdvisor-named metrics built from them (ListPodSandboxMetrics).

Reads are blocking file work, so each object's stats are gathered in a worker
thread; StatsSampler keeps the previous CPU sample to report nano cores.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from crishim.cgroups import cadvisor
from crishim.cgroups.blkio import device_name
from crishim.cgroups.detail import CgroupDetail, read_detail
from crishim.cgroups.errors import CgroupError
from crishim.cgroups.netdev import read_net_dev
from crishim.cgroups.paths import to_fs
from crishim.cgroups.records import CgroupStats
from crishim.cgroups.stats import cgroup_for, read_cgroup_stats
from crishim.images.usage import tree_usage
from crishim.runtime.network import netns
from crishim.runtime.network.netns import IfaceCounters
from crishim.runtime.services import Services
from crishim.runtime.state.records import CONTAINER_RUNNING, Container, ContainerMeta, SandboxMeta

log = logging.getLogger("crishim.stats")


@dataclass(frozen=True, slots=True)
class ContainerSample:
    meta: ContainerMeta
    state: str  # when sampled
    started_at: int  # ns since the epoch, 0 before the start
    cgroup: CgroupStats | None
    writable_bytes: int
    writable_inodes: int
    upper_dir: str


@dataclass(frozen=True, slots=True)
class PodSample:
    meta: SandboxMeta
    cgroup: CgroupStats | None
    interfaces: list[IfaceCounters]
    containers: list[ContainerSample]


def _read(svc: Services, key: str, cgroups_path: str) -> CgroupStats | None:
    if not cgroups_path:
        return None
    try:
        stats = read_cgroup_stats(cgroups_path, svc.cgroup_driver)
    except (OSError, ValueError) as exc:
        log.debug("no cgroup stats for %s: %s", key[:13], exc)
        return None
    sampled: CgroupStats = svc.stats.sample(key, stats)
    return sampled


def _container_sample(svc: Services, record: Container) -> ContainerSample:
    meta, state = record.meta, record.status.state
    cgroup = _read(svc, meta.id, meta.cgroups_path) if state == CONTAINER_RUNNING else None
    upper = f"{meta.bundle}/upper"
    used, inodes = tree_usage(upper)
    return ContainerSample(meta, state, record.status.started_at, cgroup, used, inodes, upper)


async def container_sample(svc: Services, record: Container) -> ContainerSample:
    return await asyncio.to_thread(_container_sample, svc, record)


async def pod_sample(svc: Services, meta: SandboxMeta, *, network: bool = True) -> PodSample:
    """The pod's stats; `network` False leaves the interfaces out (metrics read them from /proc)."""
    containers = await asyncio.gather(*(container_sample(svc, c) for c in svc.state.containers.in_sandbox(meta.id)))
    pod_cgroup_path = meta.cgroup_parent or meta.cgroups_path
    cgroup = await asyncio.to_thread(_read, svc, "pod:" + meta.id, pod_cgroup_path)
    interfaces: list[IfaceCounters] = []
    if network and meta.netns_path and netns.exists(meta.netns_path):
        try:
            interfaces = await netns.interface_stats(meta.netns_path)
        except Exception as exc:  # noqa: BLE001 - stats must not fail for a dying pod
            log.debug("no network stats for %s: %s", meta.id[:13], exc)
    return PodSample(meta, cgroup, [i for i in interfaces if i.name != "lo"], list(containers))


@dataclass(frozen=True, slots=True)
class PodMetrics:
    """A pod's cAdvisor samples and those of each running container (by container ID)."""

    pod_id: str
    samples: list[cadvisor.MetricValue]
    containers: list[tuple[str, list[cadvisor.MetricValue]]]


async def pod_metrics(svc: Services, meta: SandboxMeta) -> PodMetrics:
    sample = await pod_sample(svc, meta, network=False)
    return await asyncio.to_thread(_pod_metrics, svc, sample)


def _pod_metrics(svc: Services, sample: PodSample) -> PodMetrics:
    meta = sample.meta
    samples: list[cadvisor.MetricValue] = []
    pod_cgroup = meta.cgroup_parent or meta.cgroups_path
    if sample.cgroup is not None:
        samples = cadvisor.cgroup_metrics(
            sample.cgroup,
            _cgroup_id(svc, pod_cgroup),
            "",
            "",
            _pod_network(meta, [c.meta.pid for c in sample.containers if c.state == CONTAINER_RUNNING]),
            detail=_detail(svc, pod_cgroup, 0),
            start_time_ns=meta.created_at,
        )
    containers = []
    for c in sample.containers:
        if c.cgroup is None or c.state != CONTAINER_RUNNING:
            continue
        metrics = cadvisor.cgroup_metrics(
            c.cgroup,
            _cgroup_id(svc, c.meta.cgroups_path),
            c.meta.name,
            c.meta.image,
            detail=_detail(svc, c.meta.cgroups_path, c.meta.pid),
            filesystem=_filesystem(c),
            start_time_ns=c.started_at or c.meta.created_at,
        )
        containers.append((c.meta.id, metrics))
    return PodMetrics(meta.id, samples, containers)


def _cgroup_id(svc: Services, cgroups_path: str) -> str:
    """cAdvisor's id label: the cgroup's path in the hierarchy ("/kubepods/.../ID")."""
    try:
        return to_fs(cgroups_path, svc.cgroup_driver)
    except CgroupError:
        return cgroups_path


def _detail(svc: Services, cgroups_path: str, pid: int) -> CgroupDetail | None:
    try:
        return read_detail(cgroup_for(to_fs(cgroups_path, svc.cgroup_driver)), pid)
    except (OSError, ValueError, CgroupError) as exc:
        log.debug("no cgroup detail for %s: %s", cgroups_path, exc)
        return None


def _pod_network(meta: SandboxMeta, container_pids: list[int]) -> list[cadvisor.NetworkCounters]:
    """The counters of the pod's own network namespace, read through a process in it.

    That is the infra process, or in a pod without one a running container's. The
    process must still be in the pinned namespace: a PID the kernel gave to another
    process since would read someone else's interfaces.
    """
    if not meta.netns_path:
        return []
    try:
        pinned = os.stat(meta.netns_path)
    except OSError:
        return []
    for pid in [meta.pid, *container_pids]:
        if not pid:
            continue
        try:
            joined = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (pinned.st_dev, pinned.st_ino) == (joined.st_dev, joined.st_ino):
            return read_net_dev(pid)
    return []


def _filesystem(sample: ContainerSample) -> cadvisor.Filesystem | None:
    """The filesystem under the writable layer, named by its block device as cAdvisor names it."""
    try:
        st, vfs = os.stat(sample.upper_dir), os.statvfs(sample.upper_dir)
    except OSError:
        return None
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    return cadvisor.Filesystem(
        device=device_name(major, minor) or f"{major}:{minor}",
        usage_bytes=sample.writable_bytes,
        capacity_bytes=vfs.f_blocks * vfs.f_frsize,
        inodes=vfs.f_files,
        inodes_free=vfs.f_ffree,
    )
