"""Stats and metrics RPCs (what eviction and `kubectl top` read), and pod resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from crishim.cri_api import api_pb2
from crishim.runtime.boundary import cri_rpc
from crishim.runtime.ids import now_ns
from crishim.runtime.rpc.containers import container_metadata
from crishim.runtime.rpc.filters import chunks, selects, selects_container
from crishim.runtime.rpc.requests import Filtered, container_id, request_filter, sandbox_id
from crishim.runtime.rpc.sandboxes import sandbox_metadata
from crishim.runtime.state.records import SANDBOX_READY, Container, Sandbox

if TYPE_CHECKING:  # the collectors (cgroup files, cAdvisor's set) are imported by the calls that read them
    from crishim.cgroups import cadvisor
    from crishim.cgroups.records import CgroupStats, PsiData, PsiStats
    from crishim.runtime import stats as collect
    from crishim.runtime.services import Services


def _u64(value: int | None) -> api_pb2.UInt64Value | None:
    return None if value is None else api_pb2.UInt64Value(value=max(0, int(value)))


def _psi_data(data: PsiData) -> api_pb2.PsiData:
    return api_pb2.PsiData(Total=data.total_ns, Avg10=data.avg10, Avg60=data.avg60, Avg300=data.avg300)


def _psi(psi: PsiStats | None) -> api_pb2.PsiStats | None:
    if psi is None:
        return None
    out = api_pb2.PsiStats(Some=_psi_data(psi.some))
    if psi.full is not None:
        out.Full.CopyFrom(_psi_data(psi.full))
    return out


def _cpu(stats: CgroupStats | None) -> api_pb2.CpuUsage:
    if stats is None:
        return api_pb2.CpuUsage(timestamp=now_ns())
    cpu = stats.cpu
    return api_pb2.CpuUsage(
        timestamp=cpu.timestamp_ns,
        usage_core_nano_seconds=_u64(cpu.usage_core_ns),
        usage_nano_cores=_u64(cpu.usage_nano_cores),
        psi=_psi(cpu.psi),
    )


def _memory(stats: CgroupStats | None) -> api_pb2.MemoryUsage:
    if stats is None or stats.memory is None:
        return api_pb2.MemoryUsage(timestamp=now_ns())
    m = stats.memory
    return api_pb2.MemoryUsage(
        timestamp=m.timestamp_ns,
        working_set_bytes=_u64(m.working_set_bytes),
        available_bytes=_u64(m.available_bytes),
        usage_bytes=_u64(m.usage_bytes),
        rss_bytes=_u64(m.rss_bytes),
        page_faults=_u64(m.page_faults),
        major_page_faults=_u64(m.major_page_faults),
        psi=_psi(m.psi),
    )


def _swap(stats: CgroupStats | None) -> api_pb2.SwapUsage | None:
    if stats is None or stats.swap is None:
        return None
    return api_pb2.SwapUsage(
        timestamp=stats.swap.timestamp_ns,
        swap_usage_bytes=_u64(stats.swap.usage_bytes),
        swap_available_bytes=_u64(stats.swap.available_bytes),
    )


def _io(stats: CgroupStats | None) -> api_pb2.IoUsage | None:
    if stats is None or stats.io is None:
        return None
    return api_pb2.IoUsage(timestamp=stats.io.timestamp_ns, psi=_psi(stats.io.psi))


def container_stats(svc: Services, sample: collect.ContainerSample) -> api_pb2.ContainerStats:
    meta = sample.meta
    return api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(
            id=meta.id,
            metadata=container_metadata(meta),
            labels=meta.labels,
            annotations=meta.annotations,
        ),
        cpu=_cpu(sample.cgroup),
        memory=_memory(sample.cgroup),
        swap=_swap(sample.cgroup),
        io=_io(sample.cgroup),
        writable_layer=api_pb2.FilesystemUsage(
            timestamp=now_ns(),
            fs_id=api_pb2.FilesystemIdentifier(mountpoint=svc.config.root),
            used_bytes=_u64(sample.writable_bytes),
            inodes_used=_u64(sample.writable_inodes),
        ),
    )


def pod_stats(svc: Services, sample: collect.PodSample) -> api_pb2.PodSandboxStats:
    meta = sample.meta
    ts = now_ns()
    interfaces = [
        api_pb2.NetworkInterfaceUsage(
            name=i.name,
            rx_bytes=_u64(i.rx_bytes),
            rx_errors=_u64(i.rx_errors),
            tx_bytes=_u64(i.tx_bytes),
            tx_errors=_u64(i.tx_errors),
        )
        for i in sample.interfaces
    ]
    default = next((i for i in interfaces if i.name == "eth0"), interfaces[0] if interfaces else None)
    network = api_pb2.NetworkUsage(timestamp=ts, default_interface=default, interfaces=interfaces)
    cgroup = sample.cgroup
    process = None
    if cgroup is not None and cgroup.process is not None:
        process = api_pb2.ProcessUsage(
            timestamp=cgroup.process.timestamp_ns, process_count=_u64(cgroup.process.process_count)
        )
    return api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(
            id=meta.id,
            metadata=sandbox_metadata(meta),
            labels=meta.labels,
            annotations=meta.annotations,
        ),
        linux=api_pb2.LinuxPodSandboxStats(
            cpu=_cpu(cgroup),
            memory=_memory(cgroup),
            network=network,
            process=process,
            io=_io(cgroup),
            containers=[container_stats(svc, c) for c in sample.containers],
        ),
    )


def _container_filter(record: Container, f: api_pb2.ContainerStatsFilter | None) -> bool:
    return f is None or selects_container(f, record.meta)


def _pod_filter(record: Sandbox, f: api_pb2.PodSandboxStatsFilter | None) -> bool:
    return record.status.state == SANDBOX_READY and (f is None or selects(f, record.meta.id, record.meta.labels))


class StatsRpcs:
    svc: Services

    async def _container_stats(self, request: Filtered[api_pb2.ContainerStatsFilter]) -> list[api_pb2.ContainerStats]:
        from crishim.runtime import stats as collect

        f = request_filter(request)
        records = [r for r in self.svc.state.containers.all() if _container_filter(r, f)]
        samples = [await collect.container_sample(self.svc, r) for r in records]
        return [container_stats(self.svc, s) for s in samples]

    async def _pod_stats(self, request: Filtered[api_pb2.PodSandboxStatsFilter]) -> list[api_pb2.PodSandboxStats]:
        from crishim.runtime import stats as collect

        f = request_filter(request)
        records = [r for r in self.svc.state.sandboxes.all() if _pod_filter(r, f)]
        return [pod_stats(self.svc, await collect.pod_sample(self.svc, r.meta)) for r in records]

    @cri_rpc
    async def ContainerStats(
        self, request: api_pb2.ContainerStatsRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ContainerStatsResponse:
        from crishim.runtime import stats as collect

        record = self.svc.state.containers.get(container_id(self.svc, request.container_id))
        sample = await collect.container_sample(self.svc, record)
        return api_pb2.ContainerStatsResponse(stats=container_stats(self.svc, sample))

    @cri_rpc
    async def ListContainerStats(
        self, request: api_pb2.ListContainerStatsRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListContainerStatsResponse:
        return api_pb2.ListContainerStatsResponse(stats=await self._container_stats(request))

    @cri_rpc
    async def StreamContainerStats(
        self, request: api_pb2.StreamContainerStatsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.StreamContainerStatsResponse]:
        for batch in chunks(await self._container_stats(request)):
            yield api_pb2.StreamContainerStatsResponse(container_stats=batch)

    @cri_rpc
    async def PodSandboxStats(
        self, request: api_pb2.PodSandboxStatsRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PodSandboxStatsResponse:
        from crishim.runtime import stats as collect

        meta = self.svc.state.sandboxes.get(sandbox_id(self.svc, request.pod_sandbox_id)).meta
        return api_pb2.PodSandboxStatsResponse(stats=pod_stats(self.svc, await collect.pod_sample(self.svc, meta)))

    @cri_rpc
    async def ListPodSandboxStats(
        self, request: api_pb2.ListPodSandboxStatsRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListPodSandboxStatsResponse:
        return api_pb2.ListPodSandboxStatsResponse(stats=await self._pod_stats(request))

    @cri_rpc
    async def StreamPodSandboxStats(
        self, request: api_pb2.StreamPodSandboxStatsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.StreamPodSandboxStatsResponse]:
        for batch in chunks(await self._pod_stats(request)):
            yield api_pb2.StreamPodSandboxStatsResponse(pod_sandbox_stats=batch)

    @cri_rpc
    async def ListMetricDescriptors(
        self, request: api_pb2.ListMetricDescriptorsRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListMetricDescriptorsResponse:
        from crishim.cgroups import cadvisor

        return api_pb2.ListMetricDescriptorsResponse(
            descriptors=[
                api_pb2.MetricDescriptor(name=d.name, help=d.help, label_keys=list(d.label_keys))
                for d in cadvisor.list_descriptors()
            ]
        )

    async def _pod_metrics(self) -> list[api_pb2.PodSandboxMetrics]:
        from crishim.runtime import stats as collect

        out = []
        for record in self.svc.state.sandboxes.all():
            if record.status.state != SANDBOX_READY:
                continue
            pod = await collect.pod_metrics(self.svc, record.meta)
            out.append(
                api_pb2.PodSandboxMetrics(
                    pod_sandbox_id=pod.pod_id,
                    metrics=[_metric(v) for v in pod.samples],
                    container_metrics=[
                        api_pb2.ContainerMetrics(container_id=cid, metrics=[_metric(v) for v in values])
                        for cid, values in pod.containers
                    ],
                )
            )
        return out

    @cri_rpc
    async def ListPodSandboxMetrics(
        self, request: api_pb2.ListPodSandboxMetricsRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListPodSandboxMetricsResponse:
        return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=await self._pod_metrics())

    @cri_rpc
    async def StreamPodSandboxMetrics(
        self, request: api_pb2.StreamPodSandboxMetricsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.StreamPodSandboxMetricsResponse]:
        for batch in chunks(await self._pod_metrics()):
            yield api_pb2.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=batch)

    @cri_rpc
    async def UpdatePodSandboxResources(
        self, request: api_pb2.UpdatePodSandboxResourcesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.UpdatePodSandboxResourcesResponse:
        # KEP-2837: the kubelet has already resized the pod cgroup it owns; crishim writes the
        # same limits into a pod cgroup of the pod's own (see update_pod_sandbox_resources).
        from crishim.runtime.container.resources import update_pod_sandbox_resources

        await update_pod_sandbox_resources(
            self.svc,
            sandbox_id(self.svc, request.pod_sandbox_id),
            request.resources if request.HasField("resources") else None,
            request.overhead if request.HasField("overhead") else None,
        )
        return api_pb2.UpdatePodSandboxResourcesResponse()


def _metric(v: cadvisor.MetricValue) -> api_pb2.Metric:
    kind = api_pb2.COUNTER if v.type == "counter" else api_pb2.GAUGE
    return api_pb2.Metric(
        name=v.name,
        timestamp=v.timestamp_ns,
        metric_type=kind,
        label_values=list(v.label_values),
        value=api_pb2.UInt64Value(value=v.value),
    )
