"""Version, Status, RuntimeConfig and UpdateRuntimeConfig."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import grpc
from crishim.cri_api import api_pb2
from crishim.runtime.boundary import cri_rpc
from crishim.runtime.config import config_to_dict
from crishim.runtime.version import RUNTIME_API_VERSION, RUNTIME_NAME, __version__

if TYPE_CHECKING:
    from crishim.runtime.services import Services

# The CRI version this runtime speaks; api.proto: Version's `version` field is the
# kubelet's API version, answered with ours.
KUBELET_API_VERSION = "0.1.0"


class InfoRpcs:
    svc: Services

    @cri_rpc
    async def Version(
        self, request: api_pb2.VersionRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version=KUBELET_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    @cri_rpc
    async def Status(self, request: api_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> api_pb2.StatusResponse:
        net_ready, net_reason, net_message = self.svc.network_status()
        conditions = [
            api_pb2.RuntimeCondition(type="RuntimeReady", status=True),
            api_pb2.RuntimeCondition(type="NetworkReady", status=net_ready, reason=net_reason, message=net_message),
        ]
        handlers = []
        for name, features in self.svc.handler_features().items():
            handler_features = api_pb2.RuntimeHandlerFeatures(
                recursive_read_only_mounts=features.recursive_read_only,
                user_namespaces=features.user_namespaces,
            )
            handlers.append(api_pb2.RuntimeHandler(name=name, features=handler_features))
            if name == self.svc.default_handler:
                # api.proto: the handler with an empty name is the default one.
                handlers.append(api_pb2.RuntimeHandler(name="", features=handler_features))
        response = api_pb2.StatusResponse(
            status=api_pb2.RuntimeStatus(conditions=conditions),
            runtime_handlers=handlers,
            features=api_pb2.RuntimeFeatures(supplemental_groups_policy=True),
        )
        if request.verbose:
            info = self.svc.verbose_info()
            await self._add_checkpoint_support(info["handlers"])
            info["config"] = config_to_dict(self.svc.config)
            for key, value in info.items():
                response.info[key] = json.dumps(value)
        return response

    async def _add_checkpoint_support(self, handlers: dict[str, dict[str, Any]]) -> None:
        """Per handler, whether CheckpointContainer can work and why not.

        api.proto's RuntimeHandlerFeatures has no field for it, so it goes in the verbose
        info beside the handler's other details: {"available": true|false|null, "reason": ...},
        null while a first `criu check` is still running.
        """
        # Imported here: only a verbose Status needs it, not the daemon's start-up.
        from crishim.runtime.checkpoint.availability import checkpoint_support

        names = [name for name in handlers if name in self.svc.handlers]
        answers = await asyncio.gather(*(checkpoint_support(self.svc.handlers[name].runtime) for name in names))
        for name, answer in zip(names, answers, strict=True):
            if answer is None:
                handlers[name]["checkpoint"] = {"available": None, "reason": "criu check has not finished yet"}
            else:
                handlers[name]["checkpoint"] = {"available": answer.available, "reason": answer.reason}

    @cri_rpc
    async def RuntimeConfig(
        self, request: api_pb2.RuntimeConfigRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RuntimeConfigResponse:
        driver = api_pb2.SYSTEMD if self.svc.cgroup_driver == "systemd" else api_pb2.CGROUPFS
        return api_pb2.RuntimeConfigResponse(linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=driver))

    @cri_rpc
    async def UpdateRuntimeConfig(
        self, request: api_pb2.UpdateRuntimeConfigRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            await self.svc.set_pod_cidr(cidr)
        return api_pb2.UpdateRuntimeConfigResponse()
