"""UpdateContainerResources in place (KEP-1287) and UpdatePodSandboxResources."""

from __future__ import annotations

import json

from crishim.cri_api import api_pb2
from crishim.oci.opts import resources_to_spec
from crishim.runtime import convert
from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.services import Services
from crishim.runtime.state.records import CONTAINER_CREATED, CONTAINER_RUNNING
from google.protobuf import json_format


async def update_container_resources(
    svc: Services, container_id: str, linux: api_pb2.LinuxContainerResources | None
) -> None:
    meta = svc.state.get_container(container_id)
    if linux is None:
        return
    if meta.state not in (CONTAINER_CREATED, CONTAINER_RUNNING):
        raise FailedPrecondition(f"container {container_id} is {meta.state}: only a live container can be resized")
    handler = svc.handler(meta.runtime_handler)
    res = convert.resources(linux)
    assert res is not None
    await handler.runtime.update(container_id, resources_to_spec(res))
    stored = json_format.MessageToDict(linux, preserving_proto_field_name=True)
    svc.state.set_container(container_id, resources=json.dumps(stored))
