"""The streaming server against real containers: runc under conmon, a busybox bundle, a real netns.

Exec goes through `runc exec` (pipes, or a pty received over a console socket),
attach through conmon's attach socket, port-forward into a network namespace
where busybox httpd listens on localhost only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from crishim.oci.runtime import OciRuntime
from crishim.runtime.streaming.backends import (
    attach_via_conmon,
    exec_with_runtime,
    port_forward_in_netns,
)
from crishim.runtime.streaming.errors import NotFound
from crishim.runtime.streaming.server import StreamingServer
from crishim.runtime.streaming.streams import ByteReader, ByteWriter, SessionStreams, TerminalSize

from tests.support.streamclient import (
    ResizeScript,
    port_prefix,
    spdy_connect,
    spdy_exec,
    spdy_port_forward,
    when_size,
    ws_exec,
    ws_port_forward,
)
from tests.support.testimages import busybox_applets, install_busybox

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("runc", "conmon", "busybox", "ip")),
        reason="needs runc, conmon, busybox and ip",
    ),
]

RUNC = shutil.which("runc") or "/usr/sbin/runc"
CONMON = shutil.which("conmon") or "/usr/bin/conmon"
BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"


@dataclass(frozen=True)
class Container:
    cid: str
    bundle: Path


def make_bundle(base: Path, args: list[str], *, netns: str | None = None) -> Path:
    """A busybox root filesystem and a `runc spec` config edited for a non-terminal container."""
    bundle = base / uuid.uuid4().hex[:8]
    rootfs = bundle / "rootfs"
    install_busybox(rootfs)
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (rootfs / d).mkdir()
    for applet in busybox_applets():
        os.symlink("busybox", rootfs / "bin" / applet)
    subprocess.run([RUNC, "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["process"]["env"] = ["PATH=/bin", "TERM=xterm"]
    if netns is not None:
        config["linux"]["namespaces"] = [
            ns if ns["type"] != "network" else {"type": "network", "path": netns}
            for ns in config["linux"]["namespaces"]
        ]
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def start_container(base: Path, root: Path, args: list[str], *, stdin: bool) -> Container:
    cid = "crishim-stream-" + uuid.uuid4().hex[:10]
    bundle = make_bundle(base, args)
    exits = base / "exits"
    exits.mkdir(exist_ok=True)
    socks = base / "socks"
    socks.mkdir(exist_ok=True)
    cmd = [
        CONMON,
        "--api-version",
        "1",
        "-c",
        cid,
        "-u",
        cid,
        "-n",
        cid,
        "-r",
        RUNC,
        "-b",
        str(bundle),
        "-p",
        str(bundle / "pidfile"),
        "-P",
        str(bundle / "conmon.pid"),
        "-l",
        f"k8s-file:{bundle / 'ctr.log'}",
        "--exit-dir",
        str(exits),
        "--socket-dir-path",
        str(socks),
        "--runtime-arg",
        "--root",
        "--runtime-arg",
        str(root),
        "--log-level",
        "error",
    ]
    if stdin:
        cmd.append("--stdin")
    container = Container(cid, bundle)
    # conmon reports {"data": PID} on _OCI_SYNCPIPE once `runc create` succeeded.
    sync_r, sync_w = os.pipe()
    try:
        proc = subprocess.Popen(
            cmd,
            pass_fds=(sync_w,),
            env={**os.environ, "_OCI_SYNCPIPE": str(sync_w)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(sync_w)
        sync_w = -1
        ready, _, _ = select.select([sync_r], [], [], 30)
        message = os.read(sync_r, 4096) if ready else b""
        proc.wait(timeout=30)
        if b'"data"' not in message or json.loads(message)["data"] < 0:
            raise RuntimeError(
                f"conmon could not create {cid}: {message!r} {proc.stderr.read() if proc.stderr else b''!r}"
            )
        if proc.stderr is not None:
            proc.stderr.close()
        subprocess.run([RUNC, "--root", str(root), "start", cid], check=True, timeout=30)
    except BaseException:
        remove_container(root, container)
        raise
    finally:
        os.close(sync_r)
        if sync_w >= 0:
            os.close(sync_w)
    return container


def remove_container(root: Path, container: Container) -> None:
    subprocess.run([RUNC, "--root", str(root), "kill", container.cid, "KILL"], capture_output=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = subprocess.run([RUNC, "--root", str(root), "state", container.cid], capture_output=True, text=True)
        if state.returncode != 0 or json.loads(state.stdout)["status"] == "stopped":
            break
        time.sleep(0.05)
    subprocess.run([RUNC, "--root", str(root), "delete", "--force", container.cid], capture_output=True)
    pidfile = container.bundle / "conmon.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            pid = int(pidfile.read_text())
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.05)
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)


class RuncBackend:
    """What the lead's backend does, minus the state lookups: ids map straight to our containers."""

    def __init__(self, root: Path, containers: dict[str, Container], netns: dict[str, str | None]) -> None:
        self.root = root
        self.containers = containers
        self.netns = netns

    def _get(self, cid: str) -> Container:
        try:
            return self.containers[cid]
        except KeyError:
            raise NotFound(f"container {cid} not found") from None

    async def exec(self, container_id: str, cmd: list[str], streams: SessionStreams) -> int:
        c = self._get(container_id)
        return await exec_with_runtime(OciRuntime("runc", RUNC, self.root, "runc"), c.cid, cmd, streams)

    async def attach(self, container_id: str, streams: SessionStreams) -> None:
        await attach_via_conmon(self._get(container_id).bundle, streams)

    async def port_forward(self, sandbox_id: str, port: int, reader: ByteReader, writer: ByteWriter) -> None:
        if sandbox_id not in self.netns:
            raise NotFound(f"pod sandbox {sandbox_id} not found")
        await port_forward_in_netns(self.netns[sandbox_id], port, reader, writer)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("streaming")


@pytest.fixture(scope="module")
def runc_root(workdir: Path) -> Iterator[Path]:
    root = Path("/run/crishim-test-runc-" + uuid.uuid4().hex[:8])
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sleeper(workdir: Path, runc_root: Path) -> Iterator[Container]:
    container = start_container(workdir, runc_root, ["sleep", "600"], stdin=False)
    yield container
    remove_container(runc_root, container)


@pytest.fixture(scope="module")
def pod_netns() -> Iterator[str]:
    """A named netns with lo up and busybox httpd on 127.0.0.1:8080 inside it."""
    name = "crishim-pf-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    www = Path(f"/run/{name}-www")
    httpd = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        www.mkdir()
        (www / "index.html").write_text("hello from the pod\n")
        httpd = subprocess.Popen(
            ["ip", "netns", "exec", name, BUSYBOX, "httpd", "-f", "-p", "127.0.0.1:8080", "-h", str(www)]
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["ip", "netns", "exec", name, BUSYBOX, "nc", "-z", "127.0.0.1", "8080"], capture_output=True
            )
            if probe.returncode == 0:
                break
            time.sleep(0.05)
        yield f"/run/netns/{name}"
    finally:
        if httpd is not None:
            httpd.kill()
            httpd.wait()
        shutil.rmtree(www, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
async def server(runc_root: Path, sleeper: Container, pod_netns: str) -> AsyncIterator[StreamingServer]:
    backend = RuncBackend(runc_root, {"sleeper": sleeper}, {"pod": pod_netns, "hostpod": None})
    srv = StreamingServer("127.0.0.1:0", backend)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def test_exec_in_container_with_stdin_and_exit_codes(server: StreamingServer) -> None:
    ok = await spdy_exec(server.url_for_exec("sleeper", ["cat"], stdin=True), stdin=b"into the container\n")
    assert ok.stdout == b"into the container\n"
    assert ok.exit_code == 0
    bad = await spdy_exec(server.url_for_exec("sleeper", ["sh", "-c", "echo oops >&2; exit 42"]))
    assert bad.stderr == b"oops\n"
    assert bad.exit_code == 42
    assert bad.status["reason"] == "NonZeroExitCode"


async def test_exec_in_container_runs_inside_its_namespaces(server: StreamingServer) -> None:
    result = await ws_exec(server.url_for_exec("sleeper", ["sh", "-c", "echo $$; ls /bin/busybox"]))
    pid, path = result.stdout.split()
    assert path == b"/bin/busybox"
    assert int(pid) > 1  # a new process inside the container's own PID namespace
    assert result.exit_code == 0


async def test_exec_tty_in_container_sees_resize(server: StreamingServer) -> None:
    size = TerminalSize(width=111, height=33)
    command = ["sh", "-c", when_size(size, "read a; stty size")]
    url = server.url_for_exec("sleeper", command, tty=True, stdin=True, stderr=False)
    result = await spdy_exec(url, stdin=b"", tty=True, resizes=[ResizeScript(size, b"go\n")], close_stdin=False)
    assert b"33 111" in result.stdout
    assert result.exit_code == 0


async def test_exec_tty_over_websocket_reports_exit_code(server: StreamingServer) -> None:
    url = server.url_for_exec("sleeper", ["sh", "-c", "exit 5"], tty=True, stdin=False, stderr=False)
    result = await ws_exec(url, tty=True)
    assert result.exit_code == 5


async def test_exec_in_missing_container_reports_failure(server: StreamingServer) -> None:
    result = await spdy_exec(server.url_for_exec("ghost", ["true"]))
    assert result.status["status"] == "Failure"
    assert "ghost" in result.status["message"]


async def test_attach_through_conmon_with_stdin(workdir: Path, runc_root: Path) -> None:
    container = start_container(workdir, runc_root, ["sh", "-c", "echo ready; cat; echo done >&2"], stdin=True)
    try:
        backend = RuncBackend(runc_root, {"cat": container}, {})
        srv = StreamingServer("127.0.0.1:0", backend)
        await srv.start()
        try:
            url = srv.url_for_attach("cat", stdin=True, stdout=True, stderr=True)
            result = await spdy_exec(url, stdin=b"through conmon\n")
        finally:
            await srv.stop()
        # Output written before we attached is in the log, not replayed; ours comes back.
        assert b"through conmon\n" in result.stdout
        assert result.stderr == b"done\n"
        assert result.status["status"] == "Success"
    finally:
        remove_container(runc_root, container)


async def test_detach_leaves_the_container_running(workdir: Path, runc_root: Path) -> None:
    container = start_container(
        workdir, runc_root, ["sh", "-c", "while true; do echo tick; sleep 0.1; done"], stdin=False
    )
    try:
        backend = RuncBackend(runc_root, {"ticker": container}, {})
        srv = StreamingServer("127.0.0.1:0", backend)
        await srv.start()
        try:
            conn, _ = await spdy_connect(srv.url_for_attach("ticker", stdout=True, stderr=False), ["v4.channel.k8s.io"])
            error = await conn.open_stream({"streamtype": ["error"]})
            await error.close()
            out = await conn.open_stream({"streamtype": ["stdout"]}, fin=True)
            first = await asyncio.wait_for(out.read(), 5)
            assert b"tick" in first
            await conn.close()
            await asyncio.sleep(0.3)
        finally:
            await srv.stop()
        state = await asyncio.to_thread(
            subprocess.run,
            [RUNC, "--root", str(runc_root), "state", container.cid],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(state.stdout)["status"] == "running"
    finally:
        remove_container(runc_root, container)


async def test_port_forward_into_pod_netns_over_spdy(server: StreamingServer) -> None:
    conn, _ = await spdy_connect(server.url_for_port_forward("pod"), ["portforward.k8s.io"])
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(spdy_port_forward(conn, 8080, i, b"GET /index.html HTTP/1.0\r\n\r\n") for i in range(3))),
            15,
        )
    finally:
        await conn.close()
    for data, err in results:
        assert data.startswith(b"HTTP/1.")
        assert b"200" in data.split(b"\r\n")[0]
        assert data.endswith(b"hello from the pod\n")
        assert err == b""


async def test_port_forward_into_pod_netns_over_websocket(server: StreamingServer) -> None:
    url = server.url_for_port_forward("pod", [8080])
    capture = await ws_port_forward(url, b"GET /index.html HTTP/1.0\r\n\r\n")
    data = capture.get(0)
    assert data.startswith(port_prefix(8080) + b"HTTP/1.")
    assert data.endswith(b"hello from the pod\n")
    assert capture.get(1) == port_prefix(8080)


async def test_pod_port_is_not_reachable_from_host_network(server: StreamingServer) -> None:
    # httpd listens on the pod's loopback only; a host-network forward must fail, proving the netns switch.
    conn, _ = await spdy_connect(server.url_for_port_forward("hostpod"), ["portforward.k8s.io"])
    try:
        data, err = await asyncio.wait_for(spdy_port_forward(conn, 8080, 1, b"GET / HTTP/1.0\r\n\r\n"), 10)
    finally:
        await conn.close()
    if data.startswith(b"HTTP/"):
        pytest.skip("something on the host already listens on 127.0.0.1:8080")
    assert b"error forwarding port 8080" in err
