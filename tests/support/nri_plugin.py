"""An NRI test plugin of our own: connects to a daemon's NRI socket and speaks the real protocol.

It records every event it gets (with the pod's and container's identity and
the time), keeps what Synchronize sent, and lets a test hook into any event:
a hook runs in a worker thread, so it may block (on a threading.Event, say) to
hold the runtime's call open, or raise to make the plugin refuse it. It runs
its own event loop in a thread, so the synchronous tests drive it directly.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crishim.runtime.nri import nri_pb2
from crishim.runtime.nri.multiplex import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux
from crishim.runtime.nri.ttrpc import UNKNOWN, Client, Server, TtrpcError, parse

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"
POD_EVENTS = ("RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "UpdatePodSandbox", "PostUpdatePodSandbox")
CONTAINER_EVENTS = (
    "CreateContainer",
    "PostCreateContainer",
    "StartContainer",
    "PostStartContainer",
    "UpdateContainer",
    "PostUpdateContainer",
    "StopContainer",
    "RemoveContainer",
)
Hook = Callable[..., Any]


@dataclass(frozen=True)
class Event:
    kind: str
    pod_id: str
    pod_name: str
    pod_namespace: str
    pod_uid: str
    container_id: str = ""
    container_name: str = ""
    container: nri_pb2.Container | None = None
    at: float = field(default_factory=time.monotonic)


class NriTestPlugin:
    def __init__(self, socket_path: Path | None, name: str = "test-plugin", index: str = "00", fd: int = -1) -> None:
        """Connects to socket_path, or (pre-installed, started by the daemon) uses the inherited fd."""
        self.socket_path, self.name, self.index, self.fd = socket_path, name, index, fd
        self.events: list[Event] = []
        self.synced_pods: list[str] = []
        self.synced_containers: list[str] = []
        self.configure_request: nri_pb2.ConfigureRequest | None = None
        # Event name -> hook(pod, container?) run before the plugin answers; may block or raise.
        self.hooks: dict[str, Hook] = {}
        self.adjustment: nri_pb2.ContainerAdjustment | None = None
        self.subscribe = 0  # an event mask; 0 asks for every event
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"nri-{name}", daemon=True)
        self._mux: Mux | None = None
        self._pending_sync: tuple[list[str], list[str]] = ([], [])
        self._tasks: list[asyncio.Future[Any]] = []

    # -- driving it from a test --------------------------------------------------------------
    def start(self, timeout: float = 15.0, wait_ready: bool = True) -> NriTestPlugin:
        """Connects and registers; with wait_ready, returns once Synchronize is done."""
        self._thread.start()
        self._run(self._connect(), timeout)
        if wait_ready and not self.ready.wait(timeout):
            raise TimeoutError(f"NRI plugin {self.index}-{self.name} was not synchronised within {timeout}s")
        return self

    def stop(self) -> None:
        """Disconnects and ends the plugin's loop and threads, leaving nothing for the collector."""
        if self._thread.is_alive():
            self._run(self._shutdown(), 20)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._mux is not None:
            await self._mux.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._loop.shutdown_default_executor()

    def __enter__(self) -> NriTestPlugin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def crash(self) -> None:
        """Drops the connection at once, as a plugin that crashes would."""
        if self._mux is not None:
            self._run(self._mux.close(), 10)

    @property
    def connected(self) -> bool:
        return self._mux is not None and not self._mux.closed

    def recorded(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def reset(self) -> None:
        with self._lock:
            self.events.clear()

    def wait_for(self, check: Callable[[list[Event]], bool], timeout: float = 10.0) -> list[Event]:
        """Polls the recorded events until check(events) holds; AssertionError after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.recorded()
            if check(events):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"NRI events never matched: {[(e.kind, e.pod_id, e.container_id) for e in events]}"
                )
            time.sleep(0.05)

    def update_containers(self, request: nri_pb2.UpdateContainersRequest) -> nri_pb2.UpdateContainersResponse:
        """A plugin-initiated update, sent to the runtime."""
        return self._run(
            self._client.call(RUNTIME_SERVICE, "UpdateContainers", request, nri_pb2.UpdateContainersResponse, 10), 15
        )

    def _run(self, coro: Any, timeout: float) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    # -- the protocol ------------------------------------------------------------------------
    async def _connect(self) -> None:
        if self.fd >= 0:
            reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=self.fd))
        else:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        self._mux = Mux(reader, writer)
        server = Server(self._mux.open(PLUGIN_SERVICE_CONN))
        self._client = Client(self._mux.open(RUNTIME_SERVICE_CONN))
        server.register(PLUGIN_SERVICE, "Configure", self._configure)
        server.register(PLUGIN_SERVICE, "Synchronize", self._synchronize)
        server.register(PLUGIN_SERVICE, "Shutdown", self._empty)
        server.register(PLUGIN_SERVICE, "StateChange", self._empty)
        for event in POD_EVENTS + CONTAINER_EVENTS:
            server.register(PLUGIN_SERVICE, event, self._event_handler(event))
        self._tasks = [asyncio.ensure_future(job) for job in (self._mux.run(), server.run(), self._client.run())]
        request = nri_pb2.RegisterPluginRequest(plugin_name=self.name, plugin_idx=self.index, NRI_version="v0.12.1")
        await self._client.call(RUNTIME_SERVICE, "RegisterPlugin", request, nri_pb2.Empty, 10)

    async def _empty(self, payload: bytes) -> nri_pb2.Empty:
        return nri_pb2.Empty()

    async def _configure(self, payload: bytes) -> nri_pb2.ConfigureResponse:
        self.configure_request = parse(nri_pb2.ConfigureRequest, payload)
        return nri_pb2.ConfigureResponse(events=self.subscribe)

    async def _synchronize(self, payload: bytes) -> nri_pb2.SynchronizeResponse:
        request = parse(nri_pb2.SynchronizeRequest, payload)
        self._pending_sync[0].extend(p.id for p in request.pods)
        self._pending_sync[1].extend(c.id for c in request.containers)
        if request.more:
            return nri_pb2.SynchronizeResponse(more=True)
        with self._lock:
            self.synced_pods, self.synced_containers = self._pending_sync
        self._pending_sync = ([], [])
        await self._call_hook("Synchronize", request.pods, request.containers)
        self.ready.set()
        return nri_pb2.SynchronizeResponse()

    def _event_handler(self, event: str) -> Callable[[bytes], Any]:
        request_type = getattr(nri_pb2, event + "Request")
        response_type = getattr(nri_pb2, event + "Response")

        async def handle(payload: bytes) -> Any:
            request = parse(request_type, payload)
            container = request.container if event in CONTAINER_EVENTS else None
            pod = request.pod
            with self._lock:
                self.events.append(
                    Event(
                        event,
                        pod.id,
                        pod.name,
                        pod.namespace,
                        pod.uid,
                        container.id if container else "",
                        container.name if container else "",
                        container,
                    )
                )
            await self._call_hook(event, pod, *([container] if container is not None else []))
            if event == "CreateContainer" and self.adjustment is not None:
                return nri_pb2.CreateContainerResponse(adjust=self.adjustment)
            return response_type()

        return handle

    async def _call_hook(self, event: str, *args: Any) -> None:
        hook = self.hooks.get(event)
        if hook is None:
            return
        try:
            await asyncio.to_thread(hook, *args)
        except Exception as exc:  # noqa: BLE001 - the plugin's refusal, as a Go plugin's error
            raise TtrpcError(UNKNOWN, str(exc)) from exc
