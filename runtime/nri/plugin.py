"""One connected NRI plugin, as the runtime sees it: registration, configuration, calls.

The plugin's socket is multiplexed (multiplex.py): we call its Plugin service
on connection 1 and serve it our Runtime service on connection 2. It must
register within the registration timeout and answer each call within the
request timeout; one that does not, hangs up or speaks garbage is closed, and
the adaptation drops it (adaptation.py), never the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from crishim.runtime.config import NriConfig
from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.nri import nri_pb2
from crishim.runtime.nri.multiplex import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux
from crishim.runtime.nri.ttrpc import (
    DEADLINE_EXCEEDED,
    INVALID_ARGUMENT,
    UNAVAILABLE,
    Client,
    Server,
    TtrpcError,
    parse,
)
from google.protobuf.message import Message

log = logging.getLogger("crishim.nri")

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"
NRI_VERSION = "v0.12.1"
# Every event a plugin may subscribe to: bits 0..13, one per Event value 1..14.
VALID_EVENTS = (1 << (nri_pb2.LAST - 1)) - 1
# Room left in a Synchronize message below ttrpc's 4 MiB limit for the envelope.
SYNC_MESSAGE_BUDGET = (4 << 20) - (64 << 10)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.+-]+")
INDEX_PATTERN = re.compile(r"[0-9]{2}")

ResponseT = TypeVar("ResponseT", bound=Message)
UpdateHandler = Callable[["Plugin", nri_pb2.UpdateContainersRequest], Awaitable[nri_pb2.UpdateContainersResponse]]


class PluginError(FailedPrecondition):
    """A plugin refused a request (its own error), or could not be reached and was closed.

    A refused RunPodSandbox or CreateContainer fails the CRI call with this message.
    """


class PluginGone(PluginError):
    """The plugin hung up, timed out or broke the protocol; it is closed and no longer asked."""


class Plugin:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        config: NriConfig,
        *,
        name: str = "",
        index: str = "",
        plugin_config: str = "",
        on_update: UpdateHandler | None = None,
    ) -> None:
        self.name, self.index = name, index
        self.preinstalled = bool(name)
        self.events = 0
        self._config = config
        self._plugin_config = plugin_config
        self._on_update = on_update
        self._mux = Mux(reader, writer)
        self._client = Client(self._mux.open(PLUGIN_SERVICE_CONN))
        self._server = Server(self._mux.open(RUNTIME_SERVICE_CONN))
        self._server.register(RUNTIME_SERVICE, "RegisterPlugin", self._register)
        self._server.register(RUNTIME_SERVICE, "UpdateContainers", self._update_containers)
        self._registered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = asyncio.Event()
        # A pre-installed plugin's process, ended when the plugin is closed.
        self.process: asyncio.subprocess.Process | None = None

    @property
    def label(self) -> str:
        return f"{self.index or '??'}-{self.name or 'plugin'}"

    def subscribed(self, event: int) -> bool:
        return bool(self.events & (1 << (event - 1)))

    async def start(self, runtime_name: str, runtime_version: str) -> None:
        """Waits for RegisterPlugin, then Configure; PluginGone if either fails or takes too long."""
        for job in (self._mux.run(), self._client.run(), self._serve()):
            self._tasks.append(asyncio.get_running_loop().create_task(job))
        try:
            async with asyncio.timeout(self._config.plugin_registration_timeout):
                await self._registered
        except TimeoutError:
            await self.close()
            raise PluginGone(f"plugin did not register within {self._config.plugin_registration_timeout:g}s") from None
        request = nri_pb2.ConfigureRequest(
            config=self._plugin_config,
            runtime_name="crishim",
            runtime_version=runtime_version,
            registration_timeout=int(self._config.plugin_registration_timeout * 1000),
            request_timeout=int(self._config.plugin_request_timeout * 1000),
            NRI_version=NRI_VERSION,
        )
        reply = await self.call("Configure", request, nri_pb2.ConfigureResponse)
        events = reply.events or VALID_EVENTS
        if events & ~VALID_EVENTS:
            await self.close()
            raise PluginGone(f"plugin subscribed to unknown events (mask {events:#x})")
        self.events = events

    async def synchronize(
        self, pods: list[nri_pb2.PodSandbox], containers: list[nri_pb2.Container]
    ) -> list[nri_pb2.ContainerUpdate]:
        """Sends every pod and container, split into messages below ttrpc's size limit."""
        chunks = sync_chunks(pods, containers)
        updates: list[nri_pb2.ContainerUpdate] = []
        for number, (chunk_pods, chunk_containers) in enumerate(chunks, start=1):
            more = number < len(chunks)
            request = nri_pb2.SynchronizeRequest(pods=chunk_pods, containers=chunk_containers, more=more)
            reply = await self.call(
                "Synchronize", request, nri_pb2.SynchronizeResponse, self._config.plugin_registration_timeout
            )
            if more and (reply.update or not reply.more):
                await self.close()
                raise PluginGone("plugin does not take Synchronize in several messages")
            updates.extend(reply.update)
        return updates

    async def call(
        self, method: str, request: Message, response_type: type[ResponseT], within: float | None = None
    ) -> ResponseT:
        """One call; PluginError for the plugin's own refusal, PluginGone (and closed) otherwise."""
        if self.closed.is_set():
            raise PluginGone(f"plugin {self.label} is closed")
        try:
            return await self._client.call(
                PLUGIN_SERVICE, method, request, response_type, within or self._config.plugin_request_timeout
            )
        except TtrpcError as exc:
            if exc.code in (DEADLINE_EXCEEDED, UNAVAILABLE, INVALID_ARGUMENT) or self._mux.closed:
                log.error("NRI plugin %s failed %s, closing it: %s", self.label, method, exc.message)
                await self.close()
                raise PluginGone(f"NRI plugin {self.label}: {exc.message}") from exc
            raise PluginError(f"NRI plugin {self.label} refused {method}: {exc.message}") from exc

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if not self._registered.done():
            self._registered.set_exception(PluginGone("plugin hung up before registering"))
            self._registered.exception()  # start() may no longer be waiting for it
        await self._mux.close()
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        others = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        for task in others:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _serve(self) -> None:
        try:
            await self._server.run()
        except (ConnectionError, OSError) as exc:
            if not self.closed.is_set():
                log.info("NRI plugin %s disconnected: %s", self.label, exc)
        finally:
            await self.close()

    async def _register(self, payload: bytes) -> Message:
        request = parse(nri_pb2.RegisterPluginRequest, payload)
        failure = registration_error(request, self.preinstalled)
        if failure:
            if not self._registered.done():
                self._registered.set_exception(PluginGone(failure))
            raise TtrpcError(INVALID_ARGUMENT, failure)
        if not self.preinstalled:
            self.name, self.index = request.plugin_name, request.plugin_idx
        log.info("NRI plugin %s registered (NRI %s)", self.label, request.NRI_version or "unknown")
        if not self._registered.done():
            self._registered.set_result(None)
        return nri_pb2.Empty()

    async def _update_containers(self, payload: bytes) -> Message:
        request = parse(nri_pb2.UpdateContainersRequest, payload)
        if self._on_update is None:
            return nri_pb2.UpdateContainersResponse(failed=request.update)
        return await self._on_update(self, request)


def registration_error(request: nri_pb2.RegisterPluginRequest, preinstalled: bool) -> str:
    """Why a RegisterPlugin is refused ("" when it is fine): NRI's rules for names and indices."""
    if preinstalled:
        return ""
    if not NAME_PATTERN.fullmatch(request.plugin_name):
        return f"invalid plugin name {request.plugin_name!r}: use letters, digits and _.+-"
    if not INDEX_PATTERN.fullmatch(request.plugin_idx):
        return f"invalid plugin index {request.plugin_idx!r}: must be two digits"
    return ""


def sync_chunks(
    pods: list[nri_pb2.PodSandbox], containers: list[nri_pb2.Container]
) -> list[tuple[list[nri_pb2.PodSandbox], list[nri_pb2.Container]]]:
    """Pods first, then containers, packed into messages of at most SYNC_MESSAGE_BUDGET bytes."""
    chunks: list[tuple[list[nri_pb2.PodSandbox], list[nri_pb2.Container]]] = [([], [])]
    size = 0

    def room_for(item_size: int) -> None:
        nonlocal size
        if size + item_size > SYNC_MESSAGE_BUDGET and size:
            chunks.append(([], []))
            size = 0
        size += item_size

    for pod in pods:
        room_for(pod.ByteSize() + 8)  # 8: the field's tag and length prefix, generously
        chunks[-1][0].append(pod)
    for container in containers:
        room_for(container.ByteSize() + 8)
        chunks[-1][1].append(container)
    return chunks
