"""The streaming server's backend on top of runc/crun exec, conmon attach and pod netns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.services import Services
from crishim.runtime.state.records import CONTAINER_RUNNING
from crishim.runtime.streaming import backends
from crishim.runtime.streaming.streams import ByteReader, ByteWriter, TerminalSize


class RuntimeStreamBackend:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def exec(
        self,
        container_id: str,
        cmd: list[str],
        tty: bool,
        stdin: ByteReader | None,
        stdout: ByteWriter | None,
        stderr: ByteWriter | None,
        resize: AsyncIterator[TerminalSize],
    ) -> int:
        meta = self.svc.state.get_container(container_id)
        if meta.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {meta.state}, not RUNNING")
        runtime = self.svc.handler(meta.runtime_handler).runtime
        code: int = await backends.exec_with_runtime(
            runtime.path,
            str(runtime.root),
            container_id,
            cmd,
            tty,
            stdin,
            stdout,
            stderr,
            resize,
            runtime_args=["--systemd-cgroup"] if runtime.systemd_cgroup else [],
        )
        return code

    async def attach(
        self,
        container_id: str,
        tty: bool,
        stdin: ByteReader | None,
        stdout: ByteWriter | None,
        stderr: ByteWriter | None,
        resize: AsyncIterator[TerminalSize],
    ) -> None:
        meta = self.svc.state.get_container(container_id)
        if meta.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container {container_id} is {meta.state}, not RUNNING")
        bundle = Path(meta.bundle)
        await backends.attach_via_conmon(
            str(bundle / "attach"), str(bundle / "ctl"), tty, stdin, stdout, stderr, resize
        )

    async def port_forward(self, sandbox_id: str, port: int, reader: ByteReader, writer: ByteWriter) -> None:
        sandbox = self.svc.state.get_sandbox(sandbox_id)
        await backends.port_forward_in_netns(sandbox.netns_path or None, port, reader, writer)
