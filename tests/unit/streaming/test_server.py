"""The streaming server end to end: real HTTP, SPDY and WebSocket clients, real host processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from crishim.runtime.streaming.errors import InvalidArgument
from crishim.runtime.streaming.server import StreamingServer
from crishim.runtime.streaming.streams import TerminalSize

from tests.support.streamclient import (
    HTTPStatusError,
    ResizeScript,
    WebSocketClient,
    spdy_connect,
    spdy_exec,
    when_size,
    ws_exec,
)

from .conftest import TTY_CONTAINER_SIZE, HostBackend

SPDY_VERSIONS = ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]
WS_VERSIONS = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
    "channel.k8s.io",
]


async def test_spdy_exec_returns_stdout_stderr_and_success_status(server: StreamingServer) -> None:
    url = server.url_for_exec("c1", ["sh", "-c", "echo out; echo err >&2"], stdout=True, stderr=True)
    result = await spdy_exec(url)
    assert result.protocol == "v4.channel.k8s.io"
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.status == {"metadata": {}, "status": "Success"}


async def test_spdy_exec_reports_nonzero_exit_code_in_v4_status(server: StreamingServer) -> None:
    result = await spdy_exec(server.url_for_exec("c1", ["sh", "-c", "exit 7"]))
    assert result.status["status"] == "Failure"
    assert result.status["reason"] == "NonZeroExitCode"
    assert result.status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
    assert result.exit_code == 7


@pytest.mark.parametrize("protocol", SPDY_VERSIONS)
async def test_spdy_exec_echoes_stdin_for_every_protocol_version(server: StreamingServer, protocol: str) -> None:
    url = server.url_for_exec("c1", ["cat"], stdin=True, stdout=True, stderr=True)
    result = await spdy_exec(url, protocol=protocol, stdin=b"hello over spdy\n")
    assert result.protocol == protocol
    assert result.stdout == b"hello over spdy\n"
    assert result.error == (b'{"metadata":{},"status":"Success"}' if protocol.startswith("v4") else b"")


async def test_spdy_pre_v4_reports_exit_as_plain_message(server: StreamingServer) -> None:
    result = await spdy_exec(server.url_for_exec("c1", ["false"]), protocol="v2.channel.k8s.io")
    assert b"non-zero exit code" in result.error
    assert result.error.endswith(b"exit code 1")


async def test_spdy_large_stdin_round_trips_under_flow_control(server: StreamingServer) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: many times both SPDY windows
    url = server.url_for_exec("c1", ["cat"], stdin=True, stdout=True, stderr=False)
    result = await spdy_exec(url, stdin=payload, stderr=False)
    assert result.stdout == payload


async def test_spdy_tty_exec_sees_resize_in_stty_size(server: StreamingServer) -> None:
    size = TerminalSize(width=100, height=37)
    command = ["sh", "-c", when_size(size, "read a; stty size")]
    url = server.url_for_exec("c1", command, tty=True, stdin=True, stdout=True, stderr=False)
    result = await spdy_exec(url, stdin=b"", tty=True, resizes=[ResizeScript(size, b"one\n")], close_stdin=False)
    lines = result.stdout.replace(b"\r", b"").split(b"\n")
    assert b"37 100" in lines
    assert result.exit_code == 0


async def test_spdy_tty_exec_reports_exit_code(server: StreamingServer) -> None:
    url = server.url_for_exec("c1", ["sh", "-c", "exit 3"], tty=True, stdin=False, stdout=True, stderr=False)
    result = await spdy_exec(url, tty=True, stderr=False)
    assert result.exit_code == 3


async def test_spdy_attach_with_stdin(server: StreamingServer) -> None:
    url = server.url_for_attach("cat-container", stdin=True, stdout=True, stderr=True)
    result = await spdy_exec(url, stdin=b"attached input\n")
    assert result.stdout == b"attached input\n"
    assert result.status["status"] == "Success"


async def test_attach_to_unknown_container_reports_failure(server: StreamingServer) -> None:
    result = await spdy_exec(server.url_for_attach("nope", stdout=True, stderr=False), stderr=False)
    assert result.status["status"] == "Failure"
    assert "nope" in result.status["message"]


@pytest.mark.parametrize("protocol", WS_VERSIONS)
async def test_websocket_exec_echoes_stdin_for_every_subprotocol(server: StreamingServer, protocol: str) -> None:
    # Without v5 there is no stdin half-close, so the command reads one line only.
    url = server.url_for_exec("c1", ["sh", "-c", 'read line; echo "$line"; echo e >&2; exit 4'], stdin=True)
    result = await ws_exec(url, protocol=protocol, stdin=b"via websocket\n")
    assert result.protocol == protocol
    assert result.stdout == b"via websocket\n"
    assert result.stderr == b"e\n"
    if protocol.startswith(("v4", "v5")):
        assert result.exit_code == 4
    else:
        assert b"exit code 4" in result.error


async def test_websocket_v5_close_signal_ends_stdin(server: StreamingServer) -> None:
    url = server.url_for_exec("c1", ["wc", "-c"], stdin=True, stdout=True, stderr=False)
    result = await ws_exec(url, stdin=b"12345")
    assert result.stdout.strip() == b"5"
    assert result.exit_code == 0


async def test_websocket_tty_exec_sees_resize(server: StreamingServer) -> None:
    size = TerminalSize(width=90, height=21)
    command = ["sh", "-c", when_size(size, "read a; stty size")]
    url = server.url_for_exec("c1", command, tty=True, stdin=True, stderr=False)
    result = await ws_exec(url, tty=True, stdin=b"", resizes=[ResizeScript(size, b"go\n")], close_stdin=False)
    assert b"21 90" in result.stdout
    assert result.exit_code == 0


async def test_websocket_attach_tty(server: StreamingServer) -> None:
    url = server.url_for_attach("tty-container", tty=True, stdin=True, stdout=True, stderr=False)
    result = await ws_exec(
        url,
        tty=True,
        stdin=b"",
        resizes=[ResizeScript(TTY_CONTAINER_SIZE, b"x\n")],
        close_stdin=False,
    )
    assert b"11 77" in result.stdout
    assert b"got x" in result.stdout


async def test_ten_concurrent_sessions_over_both_protocols(server: StreamingServer) -> None:
    async def one(i: int) -> bytes:
        url = server.url_for_exec("c1", ["sh", "-c", f"sleep 0.3; cat; echo {i}"], stdin=True, stderr=False)
        if i % 2:
            return (await spdy_exec(url, stdin=f"s{i}\n".encode(), stderr=False)).stdout
        return (await ws_exec(url, stdin=f"s{i}\n".encode())).stdout

    started = asyncio.get_running_loop().time()
    outputs = await asyncio.gather(*(one(i) for i in range(10)))
    assert outputs == [f"s{i}\n{i}\n".encode() for i in range(10)]
    # They ran side by side, not one after another.
    assert asyncio.get_running_loop().time() - started < 3.0


async def test_reused_token_is_refused_with_404(server: StreamingServer) -> None:
    url = server.url_for_exec("c1", ["true"])
    assert (await spdy_exec(url)).exit_code == 0
    with pytest.raises(HTTPStatusError) as spdy_err:
        await spdy_connect(url, ["v4.channel.k8s.io"])
    assert spdy_err.value.status == 404
    with pytest.raises(HTTPStatusError) as ws_err:
        await WebSocketClient.connect(url, ["v5.channel.k8s.io"])
    assert ws_err.value.status == 404


async def test_expired_token_is_refused_with_404(backend: HostBackend) -> None:
    srv = StreamingServer("127.0.0.1:0", backend, token_ttl=0.2)
    await srv.start()
    try:
        url = srv.url_for_exec("c1", ["true"])
        await asyncio.sleep(0.3)  # the token's lifetime running out is what is under test
        with pytest.raises(HTTPStatusError) as err:
            await spdy_connect(url, ["v4.channel.k8s.io"])
        assert err.value.status == 404
    finally:
        await srv.stop()


async def test_unknown_token_and_wrong_route_are_404(server: StreamingServer) -> None:
    with pytest.raises(HTTPStatusError) as err:
        await spdy_connect(f"{server.base_url}/exec/not-a-token", ["v4.channel.k8s.io"])
    assert err.value.status == 404
    attach_url = server.url_for_attach("cat-container", stdin=True)
    token = attach_url.rsplit("/", 1)[1]
    with pytest.raises(HTTPStatusError) as err2:
        await spdy_connect(f"{server.base_url}/exec/{token}", ["v4.channel.k8s.io"])
    assert err2.value.status == 404


async def test_unsupported_spdy_protocol_is_refused_with_403(server: StreamingServer) -> None:
    with pytest.raises(HTTPStatusError) as err:
        await spdy_connect(server.url_for_exec("c1", ["true"]), ["v9.channel.k8s.io"])
    assert err.value.status == 403
    assert b"v4.channel.k8s.io" in err.value.body


def test_url_requests_are_validated(server: StreamingServer) -> None:
    with pytest.raises(InvalidArgument):
        server.url_for_exec("c1", [])
    with pytest.raises(InvalidArgument):
        server.url_for_exec("c1", ["sh"], tty=True, stderr=True)
    with pytest.raises(InvalidArgument):
        server.url_for_attach("c1", stdin=False, stdout=False, stderr=False)
    with pytest.raises(InvalidArgument):
        server.url_for_port_forward("s1", [70000])


async def test_client_disconnect_kills_the_exec_process(server: StreamingServer, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    url = server.url_for_exec("c1", ["sh", "-c", f"echo $$ > {marker}; exec sleep 30"], stdout=True, stderr=False)
    conn, _ = await spdy_connect(url, ["v4.channel.k8s.io"])
    error = await conn.open_stream({"streamtype": ["error"]})
    await error.close()
    await conn.open_stream({"streamtype": ["stdout"]}, fin=True)
    for _ in range(100):
        if marker.exists() and marker.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(marker.read_text())
    await conn.close()
    for _ in range(100):
        try:
            stat = await asyncio.to_thread(Path(f"/proc/{pid}/stat").read_text)
            if stat.split()[2] == "Z":
                break
        except (FileNotFoundError, ProcessLookupError):  # reaped before or while /proc was read
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"exec process {pid} still running after the client left")


async def test_spdy_v5_offered_first_by_client_go_behaves_as_v4(server: StreamingServer) -> None:
    """client-go's SPDY executor offers v5 first; over SPDY v5 is v4 (resize stream, Status JSON)."""
    url = server.url_for_exec("c1", ["sh", "-c", "exit 3"], stdout=True, stderr=True)
    result = await spdy_exec(url, protocol="v5.channel.k8s.io")
    assert result.protocol == "v5.channel.k8s.io"
    assert result.exit_code == 3
    assert result.status["reason"] == "NonZeroExitCode"
