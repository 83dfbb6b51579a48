"""The gRPC server on the unix socket and the daemon's life cycle.

SIGTERM and SIGINT stop accepting calls and let in-flight ones finish; nothing
the daemon started (conmon, containers, network namespaces) is touched by a
shutdown, so a restart finds everything as it was.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
from crishim.runtime.config import Config
from crishim.runtime.registration import add_cri_services
from crishim.runtime.socket import claim_socket_path, restrict_socket

log = logging.getLogger("crishim.server")

# The kubelet's CRI client allows 16 MiB messages; List calls on busy nodes need it.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SHUTDOWN_GRACE_SECONDS = 30.0


def release_startup_memory() -> None:
    """Start-up (imports, the pause image, probes) leaves freed heap behind; hand it back.

    An idle node agent is judged by its RSS: collect, then ask glibc to return free
    pages to the kernel.
    """
    import ctypes
    import gc

    gc.collect()
    gc.freeze()  # what is alive now lives for the daemon's lifetime: keep it out of GC scans
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def grpc_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Builds the services, serves until SIGTERM/SIGINT, then shuts down gracefully."""
    from crishim.runtime.rpc.images import ImageServicer
    from crishim.runtime.rpc.runtime import RuntimeServicer
    from crishim.runtime.services import Services

    socket_path = Path(config.socket)
    claim_socket_path(socket_path)
    services = await Services.start(config)
    server = grpc.aio.server(options=grpc_options())
    add_cri_services(server, RuntimeServicer(services), ImageServicer(services.images, Path(config.root)))
    server.add_insecure_port(f"unix://{socket_path}")
    await server.start()
    restrict_socket(socket_path)
    log.info("crishim serving CRI v1 on %s", socket_path)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    release_startup_memory()
    try:
        await stop.wait()
        log.info("shutting down: finishing in-flight calls (up to %.0fs)", SHUTDOWN_GRACE_SECONDS)
        await server.stop(SHUTDOWN_GRACE_SECONDS)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await services.close()
        socket_path.unlink(missing_ok=True)  # noqa: ASYNC240 - one unlink at exit
    log.info("crishim stopped")
