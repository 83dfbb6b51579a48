"""The streaming server's backend on top of runc/crun exec, conmon attach and pod netns.

streaming/backends.py (exec, attach, terminals, port-forward) is imported by the first
session, not with the daemon: most nodes never exec into a container.
"""

from __future__ import annotations

from pathlib import Path

from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.services import Services
from crishim.runtime.state.records import CONTAINER_RUNNING, ContainerMeta
from crishim.runtime.streaming.streams import ByteReader, ByteWriter, SessionStreams


class RuntimeStreamBackend:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def _running(self, container_id: str) -> ContainerMeta:
        record = self.svc.state.containers.get(container_id)
        if record.status.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {record.status.state}, not RUNNING")
        return record.meta

    async def exec(self, container_id: str, cmd: list[str], streams: SessionStreams) -> int:
        meta = self._running(container_id)
        runtime = self.svc.handler(meta.runtime_handler).runtime
        from crishim.runtime.streaming import backends

        return await backends.exec_with_runtime(runtime, container_id, cmd, streams)

    async def attach(self, container_id: str, streams: SessionStreams) -> None:
        from crishim.runtime.streaming import backends

        await backends.attach_via_conmon(Path(self._running(container_id).bundle), streams)

    async def port_forward(self, sandbox_id: str, port: int, reader: ByteReader, writer: ByteWriter) -> None:
        sandbox = self.svc.state.sandboxes.get(sandbox_id).meta
        from crishim.runtime.streaming import backends

        await backends.port_forward_in_netns(sandbox.netns_path or None, port, reader, writer)
