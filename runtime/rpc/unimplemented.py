"""UNIMPLEMENTED answers that name the RPC, for calls no servicer provides.

grpcio's generated base classes answer "Method not implemented!" without the
method's name; an operator reading crictl's error deserves to know which call.
Every RPC of today's api.proto is served; this answers for those a newer
api.proto adds before crishim serves them.
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


def fill_unimplemented(cls: type, base: type) -> type:
    """Replaces every RPC of `base` that `cls` does not override with a named UNIMPLEMENTED."""
    for name, member in vars(base).items():
        if name.startswith("_") or not callable(member):
            continue
        if getattr(cls, name) is member:
            setattr(cls, name, _unimplemented(name))
    return cls
