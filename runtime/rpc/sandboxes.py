"""Pod sandbox RPCs: each converts the request, calls one flow, builds the answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from crishim.cri_api import api_pb2
from crishim.runtime.boundary import cri_rpc
from crishim.runtime.bundle import read_runtime_spec
from crishim.runtime.errors import InvalidArgument
from crishim.runtime.ids import now_ns
from crishim.runtime.rpc.filters import oldest_first, selects
from crishim.runtime.rpc.requests import Filtered, request_filter, sandbox_id
from crishim.runtime.rpc.summaries import ListItems
from crishim.runtime.state.records import SANDBOX_READY, Sandbox, SandboxMeta, SandboxStatus

if TYPE_CHECKING:
    from crishim.runtime.services import Services

STATE = {SANDBOX_READY: api_pb2.SANDBOX_READY}


def sandbox_state(status: SandboxStatus) -> api_pb2.PodSandboxState:
    return STATE.get(status.state, api_pb2.SANDBOX_NOTREADY)


def sandbox_metadata(meta: SandboxMeta) -> api_pb2.PodSandboxMetadata:
    return api_pb2.PodSandboxMetadata(name=meta.name, uid=meta.uid, namespace=meta.namespace, attempt=meta.attempt)


def sandbox_status(record: Sandbox) -> api_pb2.PodSandboxStatus:
    meta = record.meta
    config = api_pb2.PodSandboxConfig.FromString(meta.config)
    network = api_pb2.PodSandboxNetworkStatus(
        ip=meta.ip, additional_ips=[api_pb2.PodIP(ip=ip) for ip in meta.additional_ips]
    )
    ns = config.linux.security_context.namespace_options
    return api_pb2.PodSandboxStatus(
        id=meta.id,
        metadata=sandbox_metadata(meta),
        state=sandbox_state(record.status),
        created_at=meta.created_at,
        network=network,
        linux=api_pb2.LinuxPodSandboxStatus(namespaces=api_pb2.Namespace(options=ns)),
        labels=meta.labels,
        annotations=meta.annotations,
        runtime_handler=meta.runtime_handler,
    )


def _matches(record: Sandbox, f: api_pb2.PodSandboxFilter | None) -> bool:
    if f is None:
        return True
    if f.HasField("state") and sandbox_state(record.status) != f.state.state:
        return False
    return selects(f, record.meta.id, record.meta.labels)


def _summary(record: Sandbox) -> api_pb2.PodSandbox:
    meta = record.meta
    return api_pb2.PodSandbox(
        id=meta.id,
        metadata=sandbox_metadata(meta),
        state=sandbox_state(record.status),
        created_at=meta.created_at,
        labels=meta.labels,
        annotations=meta.annotations,
        runtime_handler=meta.runtime_handler,
    )


_items = ListItems(_summary)


class SandboxRpcs:
    svc: Services

    @cri_rpc
    async def RunPodSandbox(
        self, request: api_pb2.RunPodSandboxRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RunPodSandboxResponse:
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        from crishim.runtime.sandbox.run import run_pod_sandbox  # validation, spec building: not for an idle daemon

        sid = await run_pod_sandbox(self.svc, request.config, request.runtime_handler)
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sid)

    @cri_rpc
    async def StopPodSandbox(
        self, request: api_pb2.StopPodSandboxRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.StopPodSandboxResponse:
        from crishim.runtime.sandbox import lifecycle  # with the infra spec builder: not for an idle daemon

        await lifecycle.stop_pod_sandbox(self.svc, sandbox_id(self.svc, request.pod_sandbox_id, missing_ok=True))
        return api_pb2.StopPodSandboxResponse()

    @cri_rpc
    async def RemovePodSandbox(
        self, request: api_pb2.RemovePodSandboxRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RemovePodSandboxResponse:
        from crishim.runtime.sandbox import lifecycle

        await lifecycle.remove_pod_sandbox(self.svc, sandbox_id(self.svc, request.pod_sandbox_id, missing_ok=True))
        return api_pb2.RemovePodSandboxResponse()

    @cri_rpc
    async def PodSandboxStatus(
        self, request: api_pb2.PodSandboxStatusRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PodSandboxStatusResponse:
        from crishim.runtime.rpc.containers import container_status

        record = self.svc.state.sandboxes.get(sandbox_id(self.svc, request.pod_sandbox_id))
        meta = record.meta
        # The evented PLEG reads the pod's container statuses and the time they were taken
        # from this one answer (api.proto: containers_statuses, timestamp).
        containers = self.svc.state.containers.in_sandbox(meta.id)
        response = api_pb2.PodSandboxStatusResponse(
            status=sandbox_status(record),
            containers_statuses=[container_status(self.svc, c) for c in containers],
            timestamp=now_ns(),
        )
        if request.verbose:
            spec = read_runtime_spec(meta.bundle)
            info = {
                # The pause process's PID, or the PID namespace holder's; 0: neither, see pinnedNamespaces.
                "pid": meta.pid,
                "pidNamespaceHolder": bool(meta.pid) and not meta.infra_container,
                "pinnedNamespaces": meta.namespace_paths,
                "runtimeHandler": meta.runtime_handler,
                "netnsPath": meta.netns_path,
                "cgroupsPath": meta.cgroups_path,
                "image": self.svc.config.sandbox_image or "built-in pause",
                "runtimeSpec": spec,
            }
            response.info["info"] = json.dumps(info)
        return response

    def _list_sandboxes(self, request: Filtered[api_pb2.PodSandboxFilter]) -> list[Sandbox]:
        f = request_filter(request)
        return oldest_first(self.svc.state.sandboxes.all(), lambda r: _matches(r, f))

    @cri_rpc
    async def ListPodSandbox(
        self, request: api_pb2.ListPodSandboxRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListPodSandboxResponse:
        return _items.response(api_pb2.ListPodSandboxResponse, "items", self._list_sandboxes(request))

    @cri_rpc
    async def StreamPodSandboxes(
        self, request: api_pb2.StreamPodSandboxesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.StreamPodSandboxesResponse]:
        sandboxes = self._list_sandboxes(request)
        for answer in _items.batches(api_pb2.StreamPodSandboxesResponse, "pod_sandboxes", sandboxes):
            yield answer

    @cri_rpc
    async def CheckpointPod(
        self, request: api_pb2.CheckpointPodRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.CheckpointPodResponse:
        from crishim.runtime.checkpoint.pod import checkpoint_pod  # tarfile, CRIU: not for an idle daemon

        sid = sandbox_id(self.svc, request.pod_sandbox_id)
        await checkpoint_pod(self.svc, sid, request.output_path, list(request.container_ids), request.options)
        return api_pb2.CheckpointPodResponse()

    @cri_rpc
    async def RestorePod(
        self, request: api_pb2.RestorePodRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RestorePodResponse:
        from crishim.runtime.checkpoint.pod_restore import restore_pod

        restored = await restore_pod(self.svc, request)
        return api_pb2.RestorePodResponse(
            pod_sandbox_id=restored.sandbox_id,
            restored_containers=[
                api_pb2.RestoredContainer(name=name, container_id=cid) for name, cid in restored.containers
            ],
        )
