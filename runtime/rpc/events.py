"""GetContainerEvents: the stream the kubelet's evented PLEG reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from crishim.cri_api import api_pb2
from crishim.runtime import events
from crishim.runtime.boundary import cri_rpc
from crishim.runtime.errors import NotFound

if TYPE_CHECKING:
    from crishim.runtime.services import Services

EVENT_TYPES = {
    events.CREATED: api_pb2.CONTAINER_CREATED_EVENT,
    events.STARTED: api_pb2.CONTAINER_STARTED_EVENT,
    events.STOPPED: api_pb2.CONTAINER_STOPPED_EVENT,
    events.DELETED: api_pb2.CONTAINER_DELETED_EVENT,
}


class EventRpcs:
    svc: Services

    @cri_rpc
    async def GetContainerEvents(
        self, request: api_pb2.GetEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        from crishim.runtime.rpc.containers import container_status
        from crishim.runtime.rpc.sandboxes import sandbox_status

        async for event in self.svc.events.subscribe():
            response = api_pb2.ContainerEventResponse(
                container_id=event.container_id,
                container_event_type=EVENT_TYPES[event.kind],
                created_at=event.created_at,
            )
            try:
                sandbox = self.svc.state.sandboxes.get(event.sandbox_id)
                response.pod_sandbox_status.CopyFrom(sandbox_status(sandbox))
                response.containers_statuses.extend(
                    container_status(self.svc, c) for c in self.svc.state.containers.in_sandbox(event.sandbox_id)
                )
            except NotFound:
                pass  # the pod is gone already (DELETED of its last container)
            yield response
