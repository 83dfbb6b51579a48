"""RuntimeService: one gRPC servicer composed of the per-area RPC classes."""

from __future__ import annotations

from crishim.runtime.rpc.containers import ContainerRpcs
from crishim.runtime.rpc.events import EventRpcs
from crishim.runtime.rpc.info import InfoRpcs
from crishim.runtime.rpc.sandboxes import SandboxRpcs
from crishim.runtime.rpc.stats import StatsRpcs
from crishim.runtime.rpc.streaming import StreamingRpcs
from crishim.runtime.rpc.unimplemented import fill_unimplemented
from crishim.runtime.services import Services


class RuntimeServicer(
    InfoRpcs,
    SandboxRpcs,
    ContainerRpcs,
    StreamingRpcs,
    StatsRpcs,
    EventRpcs,
):
    def __init__(self, services: Services) -> None:
        self.svc = services


fill_unimplemented(RuntimeServicer, "RuntimeService")
