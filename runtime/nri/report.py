"""What `crishim doctor` says of NRI: enabled or not, the socket, and the plugins it finds.

The connected plugins are the running daemon's to tell: they are asked of it
with a verbose CRI Status (the same answer `crictl info` shows, key "nri").
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from crishim.cri_api import api_pb2, api_pb2_grpc
from crishim.runtime.config import Config
from crishim.runtime.nri.launch import preinstalled

STATUS_TIMEOUT = 5.0


def nri_summary(config: Config) -> tuple[bool, str]:
    """(healthy, one line): a disabled NRI is fine; an enabled one should be served by the daemon."""
    nri = config.nri
    if not nri.enable:
        return True, "disabled ([nri] enable = false)"
    found = [f"{index}-{name}" for index, name, _ in preinstalled(Path(nri.plugin_path))]
    installed = f"pre-installed plugins in {nri.plugin_path}: {', '.join(found) or 'none'}"
    if nri.disable_connections:
        return True, f"enabled without a socket (disable_connections); {installed}"
    connected = connected_plugins(config.socket)
    if connected is None:
        return True, f"enabled, socket {nri.socket_path} (the daemon is not running); {installed}"
    return True, f"enabled, socket {nri.socket_path}; connected plugins: {', '.join(connected) or 'none'}; {installed}"


def connected_plugins(cri_socket: str) -> list[str] | None:
    """The plugins the running daemon reports (Status verbose); None when it does not answer."""
    if not Path(cri_socket).exists():
        return None
    try:
        with grpc.insecure_channel(f"unix://{cri_socket}") as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)  # type: ignore[no-untyped-call]
            answer = stub.Status(api_pb2.StatusRequest(verbose=True), timeout=STATUS_TIMEOUT)
    except grpc.RpcError:
        return None
    info = json.loads(answer.info.get("nri", "{}"))
    return [str(name) for name in info.get("plugins", [])]
