"""Container RPCs: create, start, stop, remove, status, list, exec sync, logs, resources."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from crishim.cri_api import api_pb2
from crishim.runtime.boundary import cri_rpc
from crishim.runtime.bundle import read_runtime_spec
from crishim.runtime.container import lifecycle, logs
from crishim.runtime.errors import InvalidArgument
from crishim.runtime.rpc.filters import oldest_first, selects_container
from crishim.runtime.rpc.requests import Filtered, container_id, request_filter, sandbox_id
from crishim.runtime.rpc.summaries import ListItems, Remembered
from crishim.runtime.state.records import (
    CONTAINER_CREATED,
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    Container,
    ContainerMeta,
    ContainerStatus,
)
from google.protobuf import json_format

if TYPE_CHECKING:
    from crishim.runtime.services import Services

STATE = {
    CONTAINER_CREATED: api_pb2.CONTAINER_CREATED,
    CONTAINER_RUNNING: api_pb2.CONTAINER_RUNNING,
    CONTAINER_EXITED: api_pb2.CONTAINER_EXITED,
}


def container_state(status: ContainerStatus) -> api_pb2.ContainerState:
    return STATE.get(status.state, api_pb2.CONTAINER_UNKNOWN)


def container_metadata(meta: ContainerMeta) -> api_pb2.ContainerMetadata:
    return api_pb2.ContainerMetadata(name=meta.name, attempt=meta.attempt)


def _image_spec(meta: ContainerMeta) -> api_pb2.ImageSpec:
    config = api_pb2.ContainerConfig.FromString(meta.config)
    spec = api_pb2.ImageSpec()
    spec.CopyFrom(config.image)
    spec.image = meta.image
    return spec


def container_status(svc: Services, record: Container) -> api_pb2.ContainerStatus:
    """The record's status message, built once per record (shared: copy it, never change it)."""
    return _statuses(record)


def _build_status(record: Container) -> api_pb2.ContainerStatus:
    meta, now = record.meta, record.status
    status = api_pb2.ContainerStatus(
        id=meta.id,
        metadata=container_metadata(meta),
        state=container_state(now),
        created_at=meta.created_at,
        started_at=now.started_at,
        finished_at=now.finished_at,
        exit_code=now.exit_code,
        image=_image_spec(meta),
        image_ref=meta.image_ref,
        image_id=meta.image_id,
        reason=now.reason,
        message=now.message,
        labels=meta.labels,
        annotations=meta.annotations,
        log_path=meta.log_path,
    )
    if meta.mounts:
        for item in json.loads(meta.mounts):
            status.mounts.append(json_format.ParseDict(item, api_pb2.Mount()))
    if now.resources:
        linux = json_format.ParseDict(json.loads(now.resources), api_pb2.LinuxContainerResources())
        status.resources.CopyFrom(api_pb2.ContainerResources(linux=linux))
    if meta.user:
        user = json.loads(meta.user)
        status.user.CopyFrom(
            api_pb2.ContainerUser(
                linux=api_pb2.LinuxContainerUser(
                    uid=user.get("uid", 0),
                    gid=user.get("gid", 0),
                    supplemental_groups=user.get("supplemental_groups", []),
                )
            )
        )
    return status


def _summary(record: Container) -> api_pb2.Container:
    meta = record.meta
    return api_pb2.Container(
        id=meta.id,
        pod_sandbox_id=meta.sandbox_id,
        metadata=container_metadata(meta),
        image=_image_spec(meta),
        image_ref=meta.image_ref,
        image_id=meta.image_id,
        state=container_state(record.status),
        created_at=meta.created_at,
        labels=meta.labels,
        annotations=meta.annotations,
    )


_items = ListItems(_summary)
# The kubelet asks for the status of every container it lists; a record only changes by being replaced.
_statuses = Remembered(_build_status)


def _matches(record: Container, f: api_pb2.ContainerFilter | None) -> bool:
    if f is None:
        return True
    if f.HasField("state") and container_state(record.status) != f.state.state:
        return False
    return selects_container(f, record.meta)


class ContainerRpcs:
    svc: Services

    @cri_rpc
    async def CreateContainer(
        self, request: api_pb2.CreateContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.CreateContainerResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is empty")
        if not request.HasField("config"):
            raise InvalidArgument("config is required")
        # The spec builder and its options are imported by the first create, not by an idle daemon.
        from crishim.runtime.container.create import create_container

        sid = sandbox_id(self.svc, request.pod_sandbox_id)
        cid = await create_container(self.svc, sid, request.config, request.sandbox_config)
        return api_pb2.CreateContainerResponse(container_id=cid)

    @cri_rpc
    async def StartContainer(
        self, request: api_pb2.StartContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.StartContainerResponse:
        await lifecycle.start_container(self.svc, container_id(self.svc, request.container_id))
        return api_pb2.StartContainerResponse()

    @cri_rpc
    async def StopContainer(
        self, request: api_pb2.StopContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.StopContainerResponse:
        cid = container_id(self.svc, request.container_id, missing_ok=True)
        try:
            await lifecycle.stop_container(self.svc, cid, max(0, request.timeout))
        except Exception as exc:
            if type(exc).__name__ != "NotFound":
                raise
            # api.proto: stopping an already removed container is not an error.
        return api_pb2.StopContainerResponse()

    @cri_rpc
    async def RemoveContainer(
        self, request: api_pb2.RemoveContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RemoveContainerResponse:
        await lifecycle.remove_container(self.svc, container_id(self.svc, request.container_id, missing_ok=True))
        return api_pb2.RemoveContainerResponse()

    @cri_rpc
    async def ContainerStatus(
        self, request: api_pb2.ContainerStatusRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ContainerStatusResponse:
        record = self.svc.state.containers.get(container_id(self.svc, request.container_id))
        response = api_pb2.ContainerStatusResponse(status=container_status(self.svc, record))
        if request.verbose:
            meta = record.meta
            spec = read_runtime_spec(meta.bundle)
            response.info["info"] = json.dumps(
                {
                    "pid": meta.pid,
                    "sandboxID": meta.sandbox_id,
                    "runtimeHandler": meta.runtime_handler,
                    "bundle": meta.bundle,
                    "rootfs": meta.rootfs,
                    "runtimeSpec": spec,
                }
            )
        return response

    def _list(self, request: Filtered[api_pb2.ContainerFilter]) -> list[Container]:
        f = request_filter(request)
        return oldest_first(self.svc.state.containers.all(), lambda r: _matches(r, f))

    @cri_rpc
    async def ListContainers(
        self, request: api_pb2.ListContainersRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListContainersResponse:
        return _items.response(api_pb2.ListContainersResponse, "containers", self._list(request))

    @cri_rpc
    async def StreamContainers(
        self, request: api_pb2.StreamContainersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.StreamContainersResponse]:
        for answer in _items.batches(api_pb2.StreamContainersResponse, "containers", self._list(request)):
            yield answer

    @cri_rpc
    async def ExecSync(
        self, request: api_pb2.ExecSyncRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ExecSyncResponse:
        if not request.cmd:
            raise InvalidArgument("cmd is empty: name the command to run")
        from crishim.runtime.container import exec as execs

        result = await execs.exec_sync(
            self.svc, container_id(self.svc, request.container_id), list(request.cmd), request.timeout
        )
        return api_pb2.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)

    @cri_rpc
    async def ReopenContainerLog(
        self, request: api_pb2.ReopenContainerLogRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ReopenContainerLogResponse:
        await logs.reopen_container_log(self.svc, container_id(self.svc, request.container_id))
        return api_pb2.ReopenContainerLogResponse()

    @cri_rpc
    async def CheckpointContainer(
        self, request: api_pb2.CheckpointContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.CheckpointContainerResponse:
        # Imported here: the archive writer (tarfile) is not needed to start serving.
        from crishim.runtime.checkpoint.flow import checkpoint_container

        cid = container_id(self.svc, request.container_id)
        await checkpoint_container(self.svc, cid, request.location, request.timeout)
        return api_pb2.CheckpointContainerResponse()

    @cri_rpc
    async def UpdateContainerResources(
        self, request: api_pb2.UpdateContainerResourcesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.UpdateContainerResourcesResponse:
        from crishim.runtime.container import resources

        linux = request.linux if request.HasField("linux") else None
        await resources.update_container_resources(self.svc, container_id(self.svc, request.container_id), linux)
        return api_pb2.UpdateContainerResourcesResponse()
