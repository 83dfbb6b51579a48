"""Exec, attach and port-forward through the live daemon's CRI URLs, under runc and crun.

Everything goes the way the kubelet and crictl go: the Exec/Attach/PortForward RPC
hands out a URL, and our SPDY/3.1 and WebSocket clients (tests.support.streamclient)
speak client-go's remotecommand and portforward protocols to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.oci import processes
from crishim.runtime.config import StreamingConfig
from crishim.runtime.streaming.spdy import SpdyConnection, SpdyStream
from crishim.runtime.streaming.streams import TerminalSize
from crishim.runtime.streaming.tunnel import WebSocketTunnel
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request

from tests.support.cri import (
    container_config,
    container_status,
    eventually,
    exec_sync,
    pod_config,
    remove_pod,
    start_container,
    wait_exited,
)
from tests.support.daemon import Daemon, running_daemon
from tests.support.streamclient import (
    HTTPStatusError,
    ResizeScript,
    WebSocketClient,
    port_prefix,
    spdy_connect,
    spdy_exec,
    spdy_port_forward,
    when_size,
    ws_exec,
)

pytestmark = pytest.mark.root

HANDLERS = ["runc", "crun"]
# client-go's SPDY executor offers these, newest first (crictl exec/attach, the kubelet's proxy).
CLIENT_GO_SPDY = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]
WEB_PORTS = (8080, 8081)
WEB_SERVERS = (
    "mkdir -p /w0 /w1; echo port-8080 > /w0/index.html; echo port-8081 > /w1/index.html; "
    "httpd -p 127.0.0.1:8081 -h /w1; exec httpd -f -p 8080 -h /w0"
)
HTTP_GET = b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n"
SESSION_LIMIT = 30.0
TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"


@dataclass(frozen=True)
class Pod:
    handler: str
    sid: str
    config: pb.PodSandboxConfig
    sleeper: str  # a running `sleep` container to exec into


@pytest.fixture(scope="module", params=HANDLERS)
def pod(request: pytest.FixtureRequest, live_daemon: Daemon, busybox: str) -> Iterator[Pod]:
    """A pod per runtime handler with a sleeper to exec into and two web servers on localhost."""
    handler: str = request.param
    config = pod_config(f"stream-{handler}", live_daemon)
    sid = live_daemon.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=60
    ).pod_sandbox_id
    try:
        sleeper_config = container_config("sleeper", busybox, ["sleep", "100000"])
        sleeper = start_container(live_daemon, sid, config, sleeper_config)
        start_container(live_daemon, sid, config, container_config("web", busybox, ["sh", "-c", WEB_SERVERS]))
        yield Pod(handler, sid, config, sleeper)
    finally:
        remove_pod(live_daemon, sid)


def exec_url(daemon: Daemon, cid: str, cmd: list[str], *, tty: bool = False, stdin: bool = False) -> str:
    """The request crictl builds for `crictl exec [-i] [-t]`: stdout always, stderr unless tty."""
    request = pb.ExecRequest(container_id=cid, cmd=cmd, tty=tty, stdin=stdin, stdout=True, stderr=not tty)
    url: str = daemon.runtime.Exec(request, timeout=10).url
    return url


def attach_url(daemon: Daemon, cid: str, *, tty: bool, stdin: bool = True) -> str:
    request = pb.AttachRequest(container_id=cid, tty=tty, stdin=stdin, stdout=True, stderr=not tty)
    url: str = daemon.runtime.Attach(request, timeout=10).url
    return url


def port_forward_url(daemon: Daemon, sid: str, ports: Sequence[int] = ()) -> str:
    request = pb.PortForwardRequest(pod_sandbox_id=sid, port=list(ports))
    url: str = daemon.runtime.PortForward(request, timeout=10).url
    return url


def body_of(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), response[:200]
    assert b" 200 " in head.split(b"\r\n")[0], response[:200]
    return body


# ---------------------------------------------------------------- exec


async def test_exec_without_tty_reports_output_and_exit_codes(live_daemon: Daemon, pod: Pod) -> None:
    url = exec_url(live_daemon, pod.sleeper, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname) == ("http", "127.0.0.1")
    assert parts.path.startswith("/exec/")
    failed = await spdy_exec(url)
    assert (failed.stdout, failed.stderr) == (b"out\n", b"err\n")
    assert failed.status["status"] == "Failure"
    assert failed.status["reason"] == "NonZeroExitCode"
    assert failed.status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
    assert failed.exit_code == 7
    ok = await spdy_exec(exec_url(live_daemon, pod.sleeper, ["sh", "-c", "echo fine"]))
    assert ok.stdout == b"fine\n"
    assert ok.status == {"metadata": {}, "status": "Success"}


async def test_a_command_that_cannot_run_leaves_no_zombie_behind(live_daemon: Daemon, pod: Pod) -> None:
    """crun leaves the process of a command it cannot execute to the daemon, a subreaper: collected,
    or a zombie stays, which in a pod sharing a PID namespace holds up the pause process's end."""
    assert live_daemon.proc is not None
    refused = await asyncio.to_thread(exec_sync, live_daemon, pod.sleeper, ["/no/such/command"])
    assert refused.exit_code != 0
    streamed = await spdy_exec(exec_url(live_daemon, pod.sleeper, ["/no/such/command"]))
    assert streamed.exit_code != 0
    daemon_pid = live_daemon.proc.pid
    eventually(lambda: _zombie_children(daemon_pid), lambda z: z == [], timeout=3.0, what="no zombie of the daemon")


def _zombie_children(pid: int) -> list[int]:
    """The exited, uncollected children of `pid`."""
    return [child for child in processes.children(pid) if processes.state_and_pid_levels(child)[0] == "Z"]


async def test_exec_echoes_stdin_over_spdy_and_websocket(live_daemon: Daemon, pod: Pod) -> None:
    payload = b"".join(b"line %d of the input\n" % i for i in range(2000))
    over_spdy = await spdy_exec(exec_url(live_daemon, pod.sleeper, ["cat"], stdin=True), stdin=payload)
    assert over_spdy.stdout == payload
    assert over_spdy.exit_code == 0
    over_ws = await ws_exec(
        exec_url(live_daemon, pod.sleeper, ["sh", "-c", "cat; exit 4"], stdin=True), stdin=b"via websocket\n"
    )
    assert over_ws.protocol == "v5.channel.k8s.io"
    assert over_ws.stdout == b"via websocket\n"
    assert over_ws.exit_code == 4


async def test_exec_with_tty_sees_resizes_in_stty_size(live_daemon: Daemon, pod: Pod) -> None:
    url = exec_url(live_daemon, pod.sleeper, ["sh"], tty=True, stdin=True)
    async with session_at(url, tty=True) as session:
        await session.until(b"# ")  # the shell is up and reading
        for width, height in ((100, 40), (132, 51)):
            await session.send_resize(width, height)
            await session.until_size(width, height)
        await session.stdin.write(b"exit 3\n")
        async with asyncio.timeout(SESSION_LIMIT):
            status = json.loads(await read_all(session.error))
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


async def test_exec_with_tty_over_websocket_sees_resize(live_daemon: Daemon, pod: Pod) -> None:
    url = exec_url(live_daemon, pod.sleeper, ["sh"], tty=True, stdin=True)
    size = TerminalSize(width=77, height=22)
    script = when_size(size, "stty size; exit\n").encode()
    result = await ws_exec(url, stdin=b"", tty=True, close_stdin=False, resizes=[ResizeScript(size, script)])
    # The terminal echoes the script, which names the size too: the answer is a line of its own.
    assert b"22 77" in result.stdout.replace(b"\r", b"").split(b"\n"), result.stdout
    assert result.exit_code == 0


async def test_crictl_exec_it_negotiates_over_spdy_with_client_go_protocols(live_daemon: Daemon, pod: Pod) -> None:
    """crictl exec -it: POST, every client-go version offered, then stdin+stdout+resize and a v4 status."""
    cmd = ["sh", "-c", "read line; echo got-$line; exit 5"]
    url = exec_url(live_daemon, pod.sleeper, cmd, tty=True, stdin=True)
    conn, chosen = await spdy_connect(url, CLIENT_GO_SPDY)
    try:
        assert chosen in ("v5.channel.k8s.io", "v4.channel.k8s.io")
        async with asyncio.timeout(SESSION_LIMIT):
            error = await conn.open_stream({"streamtype": ["error"]})
            await error.close()
            stdin = await conn.open_stream({"streamtype": ["stdin"]})
            stdout = await conn.open_stream({"streamtype": ["stdout"]}, fin=True)
            resize = await conn.open_stream({"streamtype": ["resize"]})
            await resize.write(b'{"Width":80,"Height":24}\n')
            await stdin.write(b"abc\r")
            out, status = await asyncio.gather(read_all(stdout), read_all(error))
    finally:
        await conn.close()
    assert b"got-abc" in out
    assert json.loads(status)["details"]["causes"] == [{"reason": "ExitCode", "message": "5"}]


async def test_exec_in_a_stopped_container_is_refused(live_daemon: Daemon, busybox: str, pod: Pod) -> None:
    done = start_container(live_daemon, pod.sid, pod.config, container_config("done", busybox, ["true"]))
    wait_exited(live_daemon, done)
    with pytest.raises(grpc.RpcError) as info:
        exec_url(live_daemon, done, ["true"])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    live_daemon.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=done), timeout=30)


async def read_all(stream: SpdyStream) -> bytes:
    parts = []
    while chunk := await stream.read():
        parts.append(chunk)
    return b"".join(parts)


# ---------------------------------------------------------------- attach


@dataclass
class AttachSession:
    """An open SPDY v4 attach, read continuously into `output`."""

    conn: SpdyConnection
    stdin: SpdyStream
    resize: SpdyStream | None
    error: SpdyStream
    output: bytearray
    pumps: list[asyncio.Task[None]]
    grew: asyncio.Event

    async def until(self, needle: bytes, time_limit: float = 15.0) -> bytes:
        async with asyncio.timeout(time_limit):
            while needle not in self.output:
                self.grew.clear()
                await self.grew.wait()
        return bytes(self.output)

    async def send_resize(self, width: int, height: int) -> None:
        assert self.resize is not None
        await self.resize.write(json.dumps({"Width": width, "Height": height}).encode())

    async def until_size(self, width: int, height: int, time_limit: float = 15.0) -> None:
        """Asks the shell `stty size` until it answers HEIGHT WIDTH: a resize reaches the terminal on its own time."""
        answer = b"%d %d" % (height, width)
        async with asyncio.timeout(time_limit):
            while True:
                asked_at = len(self.output)
                await self.stdin.write(b"stty size\n")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        while answer not in self.output[asked_at:]:
                            self.grew.clear()
                            await self.grew.wait()
                        return

    async def detach(self) -> None:
        """Drop the connection without ending stdin, as a client that goes away does."""
        await self.conn.close()
        for task in self.pumps:
            task.cancel()
        for task in self.pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def session_at(url: str, *, tty: bool):
    conn, chosen = await spdy_connect(url, CLIENT_GO_SPDY)
    assert chosen in ("v5.channel.k8s.io", "v4.channel.k8s.io")
    output = bytearray()
    grew = asyncio.Event()

    async def pump(stream: SpdyStream) -> None:
        while chunk := await stream.read():
            output.extend(chunk)
            grew.set()
        grew.set()

    session: AttachSession | None = None
    try:
        error = await conn.open_stream({"streamtype": ["error"]})
        await error.close()
        stdin = await conn.open_stream({"streamtype": ["stdin"]})
        outs = [await conn.open_stream({"streamtype": ["stdout"]}, fin=True)]
        if not tty:
            outs.append(await conn.open_stream({"streamtype": ["stderr"]}, fin=True))
        resize = await conn.open_stream({"streamtype": ["resize"]}) if tty else None
        pumps = [asyncio.create_task(pump(s)) for s in outs]
        session = AttachSession(conn, stdin, resize, error, output, pumps, grew)
        yield session
    finally:
        if session is not None:
            await session.detach()
        else:
            await conn.close()


def start_stdin_container(
    daemon: Daemon, pod: Pod, busybox: str, name: str, cmd: list[str], *, tty: bool = False, stdin_once: bool = False
) -> str:
    config = container_config(name, busybox, cmd, stdin=True, stdin_once=stdin_once, tty=tty)
    return start_container(daemon, pod.sid, pod.config, config)


async def test_attach_with_stdin_echoes_and_detaching_leaves_the_container_running(
    live_daemon: Daemon, busybox: str, pod: Pod
) -> None:
    cid = start_stdin_container(live_daemon, pod, busybox, "cat", ["cat"])
    async with session_at(attach_url(live_daemon, cid, tty=False), tty=False) as session:
        await session.stdin.write(b"first visit\n")
        await session.until(b"first visit\n")
    # stdin stays open across attaches (stdin_once is false), so a second visitor is heard too:
    # had detaching closed it, `cat` would have ended and the container with it.
    async with session_at(attach_url(live_daemon, cid, tty=False), tty=False) as session:
        await session.stdin.write(b"second visit\n")
        await session.until(b"second visit\n")
    assert container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING


async def test_attach_with_stdin_once_ends_the_container_when_stdin_closes(
    live_daemon: Daemon, busybox: str, pod: Pod
) -> None:
    cmd = ["sh", "-c", "cat; exit 6"]
    cid = start_stdin_container(live_daemon, pod, busybox, "once", cmd, stdin_once=True)
    async with session_at(attach_url(live_daemon, cid, tty=False), tty=False) as session:
        await session.stdin.write(b"only once\n")
        await session.until(b"only once\n")
        await session.stdin.close()
        async with asyncio.timeout(SESSION_LIMIT):
            assert await read_all(session.error) == b'{"metadata":{},"status":"Success"}'
    status = await asyncio.to_thread(wait_exited, live_daemon, cid)
    assert status.state == pb.CONTAINER_EXITED
    assert status.exit_code == 6


async def test_tty_attach_resizes_the_container_terminal(live_daemon: Daemon, busybox: str, pod: Pod) -> None:
    cid = start_stdin_container(live_daemon, pod, busybox, "shell", ["sh"], tty=True)
    async with session_at(attach_url(live_daemon, cid, tty=True), tty=True) as session:
        await session.send_resize(91, 33)
        await session.until_size(91, 33)
        await session.send_resize(120, 45)
        await session.until_size(120, 45)
    # Leaving the attach leaves the shell reading: a second attach still gets answers.
    async with session_at(attach_url(live_daemon, cid, tty=True), tty=True) as session:
        await session.stdin.write(b"echo $((6 * 7))\n")
        await session.until(b"42")
    assert container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING


async def test_attach_over_websocket_echoes_stdin(live_daemon: Daemon, busybox: str, pod: Pod) -> None:
    cid = start_stdin_container(live_daemon, pod, busybox, "wscat", ["cat"])
    client = await WebSocketClient.connect(attach_url(live_daemon, cid, tty=False), ["v5.channel.k8s.io"])
    try:
        await client.send(0, b"over the websocket\n")
        seen = bytearray()
        async with asyncio.timeout(SESSION_LIMIT):
            while b"over the websocket\n" not in seen:
                item = await client.recv()
                assert item is not None, "the server closed the attach"
                if item[0] == 1:
                    seen += item[1]
    finally:
        await client.close()
    # Leaving kept stdin open and `cat` running: a second visitor is heard too.
    async with session_at(attach_url(live_daemon, cid, tty=False), tty=False) as session:
        await session.stdin.write(b"second visit\n")
        await session.until(b"second visit\n")
    assert container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING


# ---------------------------------------------------------------- port-forward


async def fetch_over_spdy(conn: SpdyConnection, port: int, request_id: int) -> tuple[bytes, bytes]:
    return await spdy_port_forward(conn, port, request_id, HTTP_GET)


async def wait_for_web(daemon: Daemon, sid: str, port: int = 8080) -> None:
    """The web container may still be starting: retry until it answers."""
    deadline = time.monotonic() + 15
    while True:
        conn, _ = await spdy_connect(port_forward_url(daemon, sid), ["portforward.k8s.io"])
        try:
            async with asyncio.timeout(10):
                data, error = await fetch_over_spdy(conn, port, 0)
        finally:
            await conn.close()
        if not error and data.startswith(b"HTTP/1"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no web server on port {port}: {error!r}")
        await asyncio.sleep(0.2)


async def test_port_forward_over_spdy_serves_several_ports_and_connections(live_daemon: Daemon, pod: Pod) -> None:
    await wait_for_web(live_daemon, pod.sid)
    url = port_forward_url(live_daemon, pod.sid)  # crictl names no ports: they come with each stream
    conn, chosen = await spdy_connect(url, ["portforward.k8s.io"])
    try:
        assert chosen == "portforward.k8s.io"
        async with asyncio.timeout(SESSION_LIMIT):
            results = await asyncio.gather(*(fetch_over_spdy(conn, WEB_PORTS[i % 2], i) for i in range(8)))
            for i, (data, error) in enumerate(results):
                assert error == b""
                assert body_of(data) == b"port-%d\n" % WEB_PORTS[i % 2]
            # The connection outlives its forwarded connections.
            data, error = await fetch_over_spdy(conn, 8080, 100)
            assert body_of(data) == b"port-8080\n"
    finally:
        await conn.close()


async def test_port_forward_reports_a_closed_port_on_the_error_stream(live_daemon: Daemon, pod: Pod) -> None:
    conn, _ = await spdy_connect(port_forward_url(live_daemon, pod.sid), ["portforward.k8s.io"])
    try:
        async with asyncio.timeout(SESSION_LIMIT):
            data, error = await spdy_port_forward(conn, 9, 1, b"anyone?")
            assert data == b""
            assert b"port 9" in error
            assert b"refused" in error.lower(), error
            await wait_for_web(live_daemon, pod.sid)
            ok, _ = await fetch_over_spdy(conn, 8081, 3)  # the same connection still works
            assert body_of(ok) == b"port-8081\n"
    finally:
        await conn.close()


async def test_port_forward_over_websocket_serves_each_requested_port(live_daemon: Daemon, pod: Pod) -> None:
    await wait_for_web(live_daemon, pod.sid)
    url = port_forward_url(live_daemon, pod.sid, WEB_PORTS)
    client = await WebSocketClient.connect(url, ["v4.channel.k8s.io"])
    channels: dict[int, bytearray] = {}
    try:
        async with asyncio.timeout(SESSION_LIMIT):
            await client.send(0, HTTP_GET)
            await client.send(2, HTTP_GET)
            while (item := await client.recv()) is not None:
                channels.setdefault(item[0], bytearray()).extend(item[1])
    finally:
        await client.close()
    for index, port in enumerate(WEB_PORTS):
        data, error = bytes(channels[2 * index]), bytes(channels[2 * index + 1])
        assert data.startswith(port_prefix(port))
        assert error == port_prefix(port)
        assert body_of(data[2:]) == b"port-%d\n" % port


async def spdy_over_websocket(url: str) -> tuple[SpdyConnection, str]:
    """client-go's tunnelling dialer: WebSocket GET offering SPDY/3.1+portforward.k8s.io, then SPDY inside."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    ws = WSConnection(ConnectionType.CLIENT)
    writer.write(ws.send(Request(host=parts.netloc, target=parts.path, subprotocols=[TUNNEL_PROTOCOL])))
    await writer.drain()
    while True:
        data = await reader.read(65536)
        assert data, "the server closed the connection during the WebSocket handshake"
        ws.receive_data(data)
        accepted = [e for e in ws.events() if isinstance(e, AcceptConnection | RejectConnection)]
        if accepted:
            break
    event = accepted[0]
    if isinstance(event, RejectConnection):
        writer.close()
        raise HTTPStatusError(event.status_code, b"")
    tunnel = WebSocketTunnel(ws, reader, writer)
    conn = SpdyConnection(tunnel, tunnel, server=False)
    conn.start()
    return conn, event.subprotocol or ""


async def test_port_forward_over_spdy_tunnelled_in_websocket_like_crictl(live_daemon: Daemon, pod: Pod) -> None:
    """crictl port-forward --transport websocket: SPDY portforward.k8s.io inside binary WebSocket messages."""
    await wait_for_web(live_daemon, pod.sid)
    conn, chosen = await spdy_over_websocket(port_forward_url(live_daemon, pod.sid))
    try:
        assert chosen == TUNNEL_PROTOCOL
        async with asyncio.timeout(SESSION_LIMIT):
            results = await asyncio.gather(*(fetch_over_spdy(conn, WEB_PORTS[i % 2], i) for i in range(4)))
            refused = await spdy_port_forward(conn, 9, 99, b"x")
    finally:
        await conn.close()
    for i, (data, error) in enumerate(results):
        assert error == b""
        assert body_of(data) == b"port-%d\n" % WEB_PORTS[i % 2]
    assert refused[0] == b""
    assert b"refused" in refused[1].lower()


def free_host_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_port_forward_reaches_a_host_network_pod(live_daemon: Daemon, busybox: str) -> None:
    port = free_host_port()
    security = pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(network=pb.NODE))
    linux = pb.LinuxPodSandboxConfig(security_context=security)
    config = pod_config("stream-hostnet", live_daemon, linux=linux)
    sid = live_daemon.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    try:
        script = f"mkdir -p /w; echo host-{port} > /w/index.html; exec httpd -f -p 127.0.0.1:{port} -h /w"
        cmd = ["sh", "-c", script]
        start_container(live_daemon, sid, config, container_config("web", busybox, cmd))
        await wait_for_web(live_daemon, sid, port)
        conn, _ = await spdy_connect(port_forward_url(live_daemon, sid), ["portforward.k8s.io"])
        try:
            async with asyncio.timeout(SESSION_LIMIT):
                data, error = await fetch_over_spdy(conn, port, 1)
        finally:
            await conn.close()
        assert error == b""
        assert body_of(data) == b"host-%d\n" % port
    finally:
        remove_pod(live_daemon, sid)


# ---------------------------------------------------------------- many sessions, tokens


async def test_ten_concurrent_sessions_each_get_their_own_stream(live_daemon: Daemon, pod: Pod) -> None:
    await wait_for_web(live_daemon, pod.sid)

    async def one(i: int) -> None:
        if i % 3 != 2:
            url = exec_url(live_daemon, pod.sleeper, ["sh", "-c", f"cat; exit {i}"], stdin=True)
            client = spdy_exec if i % 3 == 0 else ws_exec
            result = await client(url, stdin=b"session %d\n" % i, time_limit=SESSION_LIMIT)
            assert result.stdout == b"session %d\n" % i
            assert result.exit_code == i
        else:
            conn, _ = await spdy_connect(port_forward_url(live_daemon, pod.sid), ["portforward.k8s.io"])
            try:
                data, error = await fetch_over_spdy(conn, 8080, i)
            finally:
                await conn.close()
            assert error == b""
            assert body_of(data) == b"port-8080\n"

    async with asyncio.timeout(60):
        await asyncio.gather(*(one(i) for i in range(10)))


async def test_a_used_token_is_refused_with_404(live_daemon: Daemon, pod: Pod) -> None:
    url = exec_url(live_daemon, pod.sleeper, ["true"])
    assert (await spdy_exec(url)).exit_code == 0
    with pytest.raises(HTTPStatusError) as spdy_again:
        await spdy_exec(url)
    assert spdy_again.value.status == 404
    with pytest.raises(HTTPStatusError) as ws_again:
        await WebSocketClient.connect(url, ["v5.channel.k8s.io"])
    assert ws_again.value.status == 404
    with pytest.raises(HTTPStatusError) as unknown:
        await spdy_exec(url.rsplit("/", 1)[0] + "/not-a-token")
    assert unknown.value.status == 404


def test_tokens_are_bound_to_their_kind(live_daemon: Daemon, pod: Pod) -> None:
    """An exec token presented at /attach/ is as good as unknown."""
    url = exec_url(live_daemon, pod.sleeper, ["true"])
    with pytest.raises(HTTPStatusError) as info:
        asyncio.run(spdy_exec(url.replace("/exec/", "/attach/")))
    assert info.value.status == 404


@pytest.mark.skipif(
    "token_ttl" not in StreamingConfig.__dataclass_fields__,
    reason="needs the streaming.token_ttl setting in the daemon config",
)
def test_an_expired_token_is_refused_with_404(test_images) -> None:
    with running_daemon("[streaming]\ntoken_ttl = 1.0\n") as daemon:
        sid = daemon.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=pod_config("ttl", daemon)), timeout=60
        ).pod_sandbox_id
        fresh = port_forward_url(daemon, sid)
        stale = port_forward_url(daemon, sid)
        conn, chosen = asyncio.run(spdy_connect(fresh, ["portforward.k8s.io"]))
        asyncio.run(conn.close())
        assert chosen == "portforward.k8s.io"
        time.sleep(1.5)  # the token's lifetime running out is what is under test
        with pytest.raises(HTTPStatusError) as info:
            asyncio.run(spdy_connect(stale, ["portforward.k8s.io"]))
        assert info.value.status == 404
        assert b"expired" in info.value.body


# ---------------------------------------------------------------- restart


async def test_attach_works_on_a_container_started_before_a_daemon_restart(
    live_daemon: Daemon, busybox: str, pod: Pod
) -> None:
    cid = start_stdin_container(live_daemon, pod, busybox, "survivor", ["cat"])
    live_daemon.kill9()
    await asyncio.to_thread(live_daemon.start)
    assert container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING
    async with session_at(attach_url(live_daemon, cid, tty=False), tty=False) as session:
        await session.stdin.write(b"after the restart\n")
        await session.until(b"after the restart\n")
    exec_after = await spdy_exec(exec_url(live_daemon, pod.sleeper, ["echo", "still here"]))
    assert exec_after.stdout == b"still here\n"
