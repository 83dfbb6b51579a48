"""A real backend for server tests: commands run on this host with real pipes and ptys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from crishim.runtime.streaming.backends import exec_on_host, port_forward_in_netns
from crishim.runtime.streaming.errors import NotFound
from crishim.runtime.streaming.server import StreamingServer
from crishim.runtime.streaming.streams import ByteReader, ByteWriter, SessionStreams, TerminalSize

from tests.support.streamclient import when_size

# The size test_websocket_attach_tty gives the "tty-container", which reports it once it has it.
TTY_CONTAINER_SIZE = TerminalSize(width=77, height=11)


class HostBackend:
    """Exec runs the command on the host; "attach" runs a fixed command per container id.

    Port-forward goes to localhost in the host network namespace (a host-network pod).
    """

    def __init__(self, attach_commands: dict[str, Sequence[str]] | None = None) -> None:
        self.attach_commands = dict(attach_commands or {})

    async def exec(self, container_id: str, cmd: list[str], streams: SessionStreams) -> int:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
        return await exec_on_host(cmd, streams, env=env)

    async def attach(self, container_id: str, streams: SessionStreams) -> None:
        cmd = self.attach_commands.get(container_id)
        if cmd is None:
            raise NotFound(f"container {container_id} not found")
        await exec_on_host(list(cmd), streams)

    async def port_forward(self, sandbox_id: str, port: int, reader: ByteReader, writer: ByteWriter) -> None:
        await port_forward_in_netns(None, port, reader, writer)


@pytest.fixture
def backend() -> HostBackend:
    tty_container = ["sh", "-c", when_size(TTY_CONTAINER_SIZE, "read x; stty size; echo got $x")]
    return HostBackend({"cat-container": ["cat"], "tty-container": tty_container})


@pytest.fixture
async def server(backend: HostBackend) -> AsyncIterator[StreamingServer]:
    srv = StreamingServer("127.0.0.1:0", backend)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()
