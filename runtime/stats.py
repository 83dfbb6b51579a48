"""Container and pod stats from cgroups, writable layers and the pod's netns.

Reads are blocking file work, so each object's stats are gathered in a worker
thread; StatsSampler keeps the previous CPU sample to report nano cores.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from crishim.cgroups.records import CgroupStats
from crishim.cgroups.stats import read_cgroup_stats
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
    return ContainerSample(meta, state, cgroup, used, inodes, upper)


async def container_sample(svc: Services, record: Container) -> ContainerSample:
    return await asyncio.to_thread(_container_sample, svc, record)


async def pod_sample(svc: Services, meta: SandboxMeta) -> PodSample:
    containers = await asyncio.gather(*(container_sample(svc, c) for c in svc.state.containers.in_sandbox(meta.id)))
    pod_cgroup_path = meta.cgroup_parent or meta.cgroups_path
    cgroup = await asyncio.to_thread(_read, svc, "pod:" + meta.id, pod_cgroup_path)
    interfaces: list[IfaceCounters] = []
    if meta.netns_path and netns.exists(meta.netns_path):
        try:
            interfaces = await netns.interface_stats(meta.netns_path)
        except Exception as exc:  # noqa: BLE001 - stats must not fail for a dying pod
            log.debug("no network stats for %s: %s", meta.id[:13], exc)
    return PodSample(meta, cgroup, [i for i in interfaces if i.name != "lo"], list(containers))
