"""Named UNIMPLEMENTED answers for RPCs of api.proto that no servicer method provides."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from crishim.cri_api import api_pb2
from crishim.runtime.rpc.images import ImageServicer
from crishim.runtime.rpc.runtime import RuntimeServicer
from crishim.runtime.rpc.unimplemented import fill_unimplemented


class Aborted(Exception):
    pass


class RecordingContext:
    """What the boundary asks of a ServicerContext when a call fails: abort(code, message)."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise Aborted


def rpc_names(service: str) -> list[str]:
    return [method.name for method in api_pb2.DESCRIPTOR.services_by_name[service].methods]


@pytest.mark.parametrize(("cls", "service"), [(RuntimeServicer, "RuntimeService"), (ImageServicer, "ImageService")])
def test_every_rpc_of_api_proto_is_served_by_our_own_method(cls: type, service: str) -> None:
    names = rpc_names(service)
    assert names
    filled = [name for name in names if getattr(cls, name).__qualname__.startswith("_unimplemented")]
    assert filled == []


async def test_a_missing_rpc_answers_unimplemented_naming_it() -> None:
    class Partial:
        async def Version(self, request: Any, context: Any) -> str:  # noqa: N802 - the RPC's name
            return "ours"

    fill_unimplemented(Partial, "RuntimeService")
    servicer: Any = Partial()
    assert await servicer.Version(None, None) == "ours"
    assert set(rpc_names("RuntimeService")) <= set(dir(Partial))
    context = RecordingContext()
    with pytest.raises(Aborted):
        await servicer.RunPodSandbox(api_pb2.RunPodSandboxRequest(), context)
    assert context.aborted == (grpc.StatusCode.UNIMPLEMENTED, "RunPodSandbox is not implemented by crishim")
