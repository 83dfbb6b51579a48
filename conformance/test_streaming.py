"""critest "Streaming": exec, attach and port-forward through the URLs the runtime hands out.

critest drives these with client-go's SPDY executors; tests.support.streamclient speaks
the same protocols (remotecommand v4 and portforward.k8s.io over SPDY/3.1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon
from tests.support.streamclient import spdy_connect, spdy_exec, spdy_port_forward

pytestmark = pytest.mark.root

HOSTNET_WEB_IMAGE = critest.STAGING + "hostnet-nginx-amd64"
HOSTNET_WEB_PORT = 12003
HTTP_GET = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"


@contextlib.contextmanager
def _exec_url(daemon: Daemon, *, tty: bool, stdin: bool, stderr: bool) -> Iterator[str]:
    """critest's createExec: a default container in a default pod, and the URL of `echo -n hello` in it."""
    with critest.default_pod(daemon) as (pod_id, cfg):
        cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-exec-test")
        cri.start(daemon, cid)
        req = pb.ExecRequest(
            container_id=cid, cmd=["echo", "-n", "hello"], stdout=True, stderr=stderr, tty=tty, stdin=stdin
        )
        url: str = daemon.runtime.Exec(req, timeout=cri.CALL_TIMEOUT).url
        assert url.startswith("http"), f"Exec URL has no host: {url!r}"
        yield url


def test_exec_without_tty_or_stdin(daemon: Daemon) -> None:
    """[k8s.io] Streaming runtime should support streaming interfaces
    runtime should support exec with tty=false and stdin=false [Conformance]"""
    with _exec_url(daemon, tty=False, stdin=False, stderr=True) as url:
        result = asyncio.run(spdy_exec(url, stdin=None, stdout=True, stderr=True, tty=False))
        assert result.stdout == b"hello"
        assert result.stderr == b""
        assert result.exit_code == 0


def test_exec_with_tty_and_stdin(daemon: Daemon) -> None:
    """[k8s.io] Streaming runtime should support streaming interfaces
    runtime should support exec with tty=true and stdin=true [Conformance]"""
    with _exec_url(daemon, tty=True, stdin=True, stderr=False) as url:
        result = asyncio.run(spdy_exec(url, stdin=b"", stdout=True, stderr=False, tty=True))
        assert b"hello" in result.stdout
        assert result.stderr == b""


async def _attach_echo(url: str) -> tuple[bytes, bytes, bytes]:
    """critest's checkAttach: no output while stdin is idle, then exactly "hello" for `echo -n hello`."""
    async with asyncio.timeout(60):
        conn, _ = await spdy_connect(url, ["v4.channel.k8s.io"])
        try:
            error = await conn.open_stream({"streamtype": ["error"]})
            await error.close()
            stdin = await conn.open_stream({"streamtype": ["stdin"]})
            stdout = await conn.open_stream({"streamtype": ["stdout"]}, fin=True)
            stderr = await conn.open_stream({"streamtype": ["stderr"]}, fin=True)
            out = bytearray()
            err = bytearray()
            grew = asyncio.Event()

            async def pump(stream, sink: bytearray) -> None:
                while chunk := await stream.read():
                    sink.extend(chunk)
                    grew.set()

            tasks = [asyncio.create_task(pump(stdout, out)), asyncio.create_task(pump(stderr, err))]
            # critest's idle check: whatever the shell prints first, then nothing more for a
            # while with nothing on stdin. The waiting is what is checked, so it stays a sleep.
            await asyncio.sleep(1)
            header = bytes(out)
            await asyncio.sleep(1)
            assert bytes(out) == header, "the container kept writing with no input on stdin"
            await stdin.write(b"echo -n hello\n")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while bytes(out[len(header) :]) != b"hello":
                        grew.clear()
                        await grew.wait()
            await asyncio.sleep(2)  # critest then watches 3 s for anything more: a check of silence
            seen = bytes(out[len(header) :])
            await stdin.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.gather(*tasks)
            return seen, bytes(err), header
        finally:
            await conn.close()


def test_attach_echoes_stdin_command(daemon: Daemon) -> None:
    """[k8s.io] Streaming runtime should support streaming interfaces
    runtime should support attach [Conformance]"""
    with critest.default_pod(daemon) as (pod_id, cfg):
        config = critest.container_config("container-for-attach-test", command=["/bin/sh"], stdin=True, stdin_once=True)
        cid = critest.create_container(daemon, pod_id, cfg, config)
        cri.start(daemon, cid)
        req = pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True, tty=False)
        url = daemon.runtime.Attach(req, timeout=cri.CALL_TIMEOUT).url
        seen, err, _ = asyncio.run(_attach_echo(url))
        assert seen == b"hello"
        assert err == b""


async def _forward_get(url: str, port: int) -> bytes:
    conn, _ = await spdy_connect(url, ["portforward.k8s.io"])
    try:
        async with asyncio.timeout(30):
            data, error = await spdy_port_forward(conn, port, 0, HTTP_GET)
        assert error == b"", f"port-forward error stream: {error!r}"
        return data
    finally:
        await conn.close()


def _port_forward_url(daemon: Daemon, pod_id: str) -> str:
    url: str = daemon.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id), timeout=cri.CALL_TIMEOUT).url
    assert url.startswith("http"), f"PortForward URL has no host: {url!r}"
    return url


def _status_line(response: bytes) -> bytes:
    return response.split(b"\r\n", 1)[0]


def test_port_forward_reaches_pod_web_server(daemon: Daemon) -> None:
    """[k8s.io] Streaming runtime should support streaming interfaces
    runtime should support portforward [Conformance]"""
    mapping = pb.PortMapping(container_port=critest.WEB_SERVER_PORT)
    with critest.web_server_pod(daemon, mapping, "container-for-portforward-test") as pod_id:
        critest.check_main_page(daemon, pod_id, mapping)
        # critest listens on host port 12001 and forwards to 80; we speak the stream directly.
        response = asyncio.run(_forward_get(_port_forward_url(daemon, pod_id), critest.WEB_SERVER_PORT))
        assert b" 200 " in _status_line(response), response[:200]


def test_port_forward_reaches_host_network_web_server(daemon: Daemon) -> None:
    """[k8s.io] Streaming runtime should support streaming interfaces
    runtime should support portforward in host network"""
    mapping = pb.PortMapping(container_port=HOSTNET_WEB_PORT)
    prefix = "container-for-host-net-portforward-test"
    with critest.web_server_pod(daemon, mapping, prefix, host_network=True, image=HOSTNET_WEB_IMAGE) as pod_id:
        critest.check_main_page(daemon, pod_id, mapping, host_network=True)
        response = asyncio.run(_forward_get(_port_forward_url(daemon, pod_id), HOSTNET_WEB_PORT))
        assert b" 200 " in _status_line(response), response[:200]
