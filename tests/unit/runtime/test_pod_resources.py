"""The pod cgroup limits UpdatePodSandboxResources writes: the pod's resources plus its overhead."""

from __future__ import annotations

from crishim.cgroups.records import Resources
from crishim.cri_api import api_pb2 as pb
from crishim.runtime.container.resources import pod_cgroup_limits

MiB = 1 << 20


def test_overhead_is_added_to_each_limit_that_is_set() -> None:
    resources = pb.LinuxContainerResources(
        cpu_shares=1024, cpu_period=100_000, cpu_quota=150_000, memory_limit_in_bytes=512 * MiB
    )
    overhead = pb.LinuxContainerResources(
        cpu_shares=102, cpu_period=100_000, cpu_quota=10_000, memory_limit_in_bytes=64 * MiB
    )
    assert pod_cgroup_limits(resources, overhead) == Resources(
        cpu_shares=1126, cpu_quota=160_000, cpu_period=100_000, memory_limit=576 * MiB
    )


def test_unset_values_stay_unset_even_with_an_overhead() -> None:
    overhead = pb.LinuxContainerResources(cpu_shares=102, cpu_quota=10_000, memory_limit_in_bytes=64 * MiB)
    limits = pod_cgroup_limits(pb.LinuxContainerResources(cpu_shares=256), overhead)
    assert limits == Resources(cpu_shares=358)


def test_unlimited_quota_stays_unlimited() -> None:
    limits = pod_cgroup_limits(pb.LinuxContainerResources(cpu_quota=-1, cpu_period=100_000), None)
    assert (limits.cpu_quota, limits.cpu_period) == (-1, 100_000)


def test_cpuset_and_unified_keys_pass_through() -> None:
    resources = pb.LinuxContainerResources(cpuset_cpus="0-1", unified={"memory.high": "1000000"})
    limits = pod_cgroup_limits(resources, None)
    assert limits.cpuset_cpus == "0-1"
    assert dict(limits.unified) == {"memory.high": "1000000"}
