"""Streaming server for Exec, Attach and PortForward (CRI v1, api.proto `Exec`/`Attach`/`PortForward`).

The CRI calls only hand out URLs; the client (kubelet, crictl, kubectl through the
apiserver) then upgrades an HTTP/1.1 connection there to SPDY/3.1 or WebSocket and
speaks the Kubernetes remotecommand / portforward sub-protocols. How a command is
actually run is left to a `StreamBackend`.
"""

from __future__ import annotations

from crishim.runtime.streaming.server import StreamingServer
from crishim.runtime.streaming.streams import (
    ByteReader,
    ByteWriter,
    StreamBackend,
    TerminalSize,
)
from crishim.runtime.streaming.tokens import AttachRequest, ExecRequest, PortForwardRequest

__all__ = [
    "AttachRequest",
    "ByteReader",
    "ByteWriter",
    "ExecRequest",
    "PortForwardRequest",
    "StreamBackend",
    "StreamingServer",
    "TerminalSize",
]
