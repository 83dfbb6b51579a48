"""UNIMPLEMENTED answers that name the RPC, for calls no servicer provides.

grpcio's generated base classes answer "Method not implemented!" without the
method's name; an operator reading crictl's error deserves to know which call.
Every RPC of today's api.proto is served; this answers for those a newer
api.proto adds before crishim serves them.

The RPCs are read from api.proto's service descriptor, not from the generated
api_pb2_grpc classes: that module (stubs, servicers and helpers for every RPC) is
over 2 MiB of an idle daemon's memory for nothing the daemon calls.
"""

from __future__ import annotations

from typing import Any

import grpc
from crishim.runtime.boundary import cri_rpc
from crishim.runtime.errors import Unimplemented


def _unimplemented(name: str) -> Any:
    # Through the boundary like every other call, so metrics count it too.
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unimplemented(f"{name} is not implemented by crishim")

    handler.__name__ = name
    return cri_rpc(handler)


def fill_unimplemented(cls: type, service: str) -> type:
    """Gives `cls` a named UNIMPLEMENTED for every RPC of CRI's `service` (e.g. "ImageService")
    that it does not define."""
    from crishim.cri_api import api_pb2

    for method in api_pb2.DESCRIPTOR.services_by_name[service].methods:
        if not callable(getattr(cls, method.name, None)):
            setattr(cls, method.name, _unimplemented(method.name))
    return cls
