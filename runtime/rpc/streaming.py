"""Exec, Attach and PortForward: each answers with a single-use streaming URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from crishim.cri_api import api_pb2
from crishim.runtime.boundary import cri_rpc
from crishim.runtime.errors import FailedPrecondition, InvalidArgument
from crishim.runtime.rpc.requests import container_id, sandbox_id
from crishim.runtime.state.records import CONTAINER_RUNNING, SANDBOX_READY

if TYPE_CHECKING:
    from crishim.runtime.services import Services


class StreamingRpcs:
    svc: Services

    def _running_container(self, wanted: str) -> str:
        cid = container_id(self.svc, wanted)
        state = self.svc.state.containers.get(cid).status.state
        if state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {cid} is {state}, not RUNNING")
        return cid

    @cri_rpc
    async def Exec(self, request: api_pb2.ExecRequest, context: grpc.aio.ServicerContext) -> api_pb2.ExecResponse:
        cid = self._running_container(request.container_id)
        if not request.cmd:
            raise InvalidArgument("cmd is empty: name the command to run")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout and stderr must be true")
        url = self.svc.streaming.url_for_exec(
            cid,
            list(request.cmd),
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr and not request.tty,
        )
        return api_pb2.ExecResponse(url=url)

    @cri_rpc
    async def Attach(self, request: api_pb2.AttachRequest, context: grpc.aio.ServicerContext) -> api_pb2.AttachResponse:
        cid = self._running_container(request.container_id)
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout and stderr must be true")
        url = self.svc.streaming.url_for_attach(
            cid, tty=request.tty, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr and not request.tty
        )
        return api_pb2.AttachResponse(url=url)

    @cri_rpc
    async def PortForward(
        self, request: api_pb2.PortForwardRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PortForwardResponse:
        sid = sandbox_id(self.svc, request.pod_sandbox_id)
        if self.svc.state.sandboxes.get(sid).status.state != SANDBOX_READY:
            raise FailedPrecondition(f"pod sandbox {sid} is not ready")
        url = self.svc.streaming.url_for_port_forward(sid, [int(p) for p in request.port])
        return api_pb2.PortForwardResponse(url=url)
