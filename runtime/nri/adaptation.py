"""The runtime side of NRI: the plugin socket, the connected plugins, and event delivery.

Events go to the plugins in index order, one event at a time (one lock), so
every plugin sees them in the order the runtime made them. A plugin's own
error fails RunPodSandbox and CreateContainer (the CRI call reports it); for
every other event it is logged. A plugin that hangs up, times out or breaks
the protocol is closed and dropped: the event goes on without it, except that
RunPodSandbox, CreateContainer and UpdateContainer fail saying so (what the
plugin would have adjusted or refused is unknown), and a retry goes on without it.

A plugin that connects is synchronised with every pod and container before it
hears any event. Creating a pod or container takes the creation gate from its
hook until its record is stored, and synchronising waits for the gate to be
free and holds new creations back: so a pod or container made around the
plugin's Synchronize is either in what it is sent, or reaches it as an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from crishim.runtime.config import NriConfig
from crishim.runtime.nri import nri_pb2
from crishim.runtime.nri.adjust import Adjustment, collect_adjustments
from crishim.runtime.nri.gate import CreationGate
from crishim.runtime.nri.launch import launch_preinstalled
from crishim.runtime.nri.plugin import Plugin, PluginError, PluginGone, UpdateHandler

log = logging.getLogger("crishim.nri")

Snapshot = Callable[[], tuple[list[nri_pb2.PodSandbox], list[nri_pb2.Container]]]


class Nri:
    def __init__(self, config: NriConfig, runtime_version: str = "") -> None:
        self.config = config
        self.runtime_version = runtime_version
        self.plugins: list[Plugin] = []
        self.gate = CreationGate()
        self._lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._snapshot: Snapshot = lambda: ([], [])
        self._on_update: UpdateHandler | None = None
        self._connecting: set[asyncio.Task[None]] = set()
        self._synchronizing = 0

    @property
    def enabled(self) -> bool:
        return self.config.enable

    @property
    def active(self) -> bool:
        """Whether any plugin is connected or being synchronised: else events need no message at all."""
        return bool(self.plugins) or self._synchronizing > 0

    async def start(self, snapshot: Snapshot, on_update: UpdateHandler | None = None) -> None:
        """Starts the pre-installed plugins, then serves the socket (unless connections are disabled)."""
        if not self.enabled:
            return
        self._snapshot, self._on_update = snapshot, on_update
        for plugin in await launch_preinstalled(self.config, on_update):
            await self._admit(plugin)
        if self.config.disable_connections:
            return
        path = self.config.socket_path
        remove_socket(path, make_parent=True)
        try:
            self._server = await asyncio.start_unix_server(self._accept, path=path)
            os.chmod(path, 0o600)
        except OSError as exc:  # plugins are add-ons: the node still runs pods without them
            log.error("NRI: cannot serve plugins on %s: %s; only pre-installed plugins are connected", path, exc)
            return
        log.info("NRI: serving plugins on %s", path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            remove_socket(self.config.socket_path)
        for task in list(self._connecting):
            task.cancel()
        for plugin in list(self.plugins):
            await plugin.close()
        self.plugins.clear()

    def info(self) -> dict[str, Any]:
        """What `crishim doctor` and the verbose CRI Status report."""
        return {
            "enable": self.enabled,
            "socket_path": "" if self.config.disable_connections else self.config.socket_path,
            "plugins": [p.label for p in self.plugins if not p.closed.is_set()],
        }

    # -- connecting plugins ------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connecting.add(task)
        try:
            await self._admit(Plugin(reader, writer, self.config, on_update=self._on_update))
        finally:
            self._connecting.discard(task)

    async def _admit(self, plugin: Plugin) -> None:
        """Registration, Configure and Synchronize; a plugin failing any of them is dropped."""
        try:
            await plugin.start("crishim", self.runtime_version)
            self._synchronizing += 1
            try:
                async with self.gate.synchronizing(), self._lock:
                    pods, containers = self._snapshot()
                    updates = await plugin.synchronize(pods, containers)
                    self.plugins.append(plugin)
                    self.plugins.sort(key=lambda p: (p.index, p.name))
            finally:
                self._synchronizing -= 1
        except PluginError as exc:
            log.error("NRI plugin %s not connected: %s", plugin.label, exc)
            await plugin.close()
            return
        log.info(
            "NRI plugin %s connected and synchronised (%d pods, %d containers)",
            plugin.label,
            len(pods),
            len(containers),
        )
        if updates and self._on_update is not None:
            await self._on_update(plugin, nri_pb2.UpdateContainersRequest(update=updates))

    # -- events ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def creating(self) -> AsyncIterator[None]:
        """Held by RunPodSandbox and CreateContainer from their hook until their record is stored."""
        async with self.gate.creating():
            yield

    async def run_pod_sandbox(self, pod: nri_pb2.PodSandbox) -> None:
        """Fails (PluginError) when a plugin refuses the pod."""
        await self._deliver(nri_pb2.RUN_POD_SANDBOX, "RunPodSandbox", nri_pb2.RunPodSandboxRequest(pod=pod), fatal=True)

    async def stop_pod_sandbox(self, pod: nri_pb2.PodSandbox) -> None:
        await self._deliver(nri_pb2.STOP_POD_SANDBOX, "StopPodSandbox", nri_pb2.StopPodSandboxRequest(pod=pod))

    async def remove_pod_sandbox(self, pod: nri_pb2.PodSandbox) -> None:
        await self._deliver(nri_pb2.REMOVE_POD_SANDBOX, "RemovePodSandbox", nri_pb2.RemovePodSandboxRequest(pod=pod))

    async def create_container(self, pod: nri_pb2.PodSandbox, container: nri_pb2.Container) -> Adjustment:
        """Every plugin's adjustment, merged in index order; PluginError on a refusal or a conflict."""
        request = nri_pb2.CreateContainerRequest(pod=pod, container=container)
        replies = await self._deliver(nri_pb2.CREATE_CONTAINER, "CreateContainer", request, fatal=True)
        return collect_adjustments([(plugin.label, reply) for plugin, reply in replies])

    async def container_event(self, event: int, pod: nri_pb2.PodSandbox, container: nri_pb2.Container) -> None:
        """PostCreate, Start, PostStart, PostUpdate, Stop and Remove: plugins are told, errors logged."""
        method, request_type = CONTAINER_EVENTS[event]
        await self._deliver(event, method, request_type(pod=pod, container=container))

    async def update_container(
        self, pod: nri_pb2.PodSandbox, container: nri_pb2.Container, resources: nri_pb2.LinuxResources
    ) -> None:
        request = nri_pb2.UpdateContainerRequest(pod=pod, container=container, linux_resources=resources)
        await self._deliver(nri_pb2.UPDATE_CONTAINER, "UpdateContainer", request, fatal=True)

    async def update_pod_sandbox(
        self, pod: nri_pb2.PodSandbox, resources: nri_pb2.LinuxResources, overhead: nri_pb2.LinuxResources
    ) -> None:
        request = nri_pb2.UpdatePodSandboxRequest(pod=pod, linux_resources=resources, overhead_linux_resources=overhead)
        await self._deliver(nri_pb2.UPDATE_POD_SANDBOX, "UpdatePodSandbox", request, fatal=True)

    async def post_update_pod_sandbox(self, pod: nri_pb2.PodSandbox) -> None:
        request = nri_pb2.PostUpdatePodSandboxRequest(pod=pod)
        await self._deliver(nri_pb2.POST_UPDATE_POD_SANDBOX, "PostUpdatePodSandbox", request)

    async def _deliver(self, event: int, method: str, request: Any, fatal: bool = False) -> list[tuple[Plugin, Any]]:
        """Asks each subscribed plugin in index order; then applies the updates they asked for, if any."""
        response_type = getattr(nri_pb2, method + "Response")
        replies = []
        async with self._lock:
            for plugin in self._subscribed(event):
                reply = await self._ask(plugin, method, request, response_type, fatal)
                if reply is not None:
                    replies.append((plugin, reply))
        # Outside the lock: an update may itself be told to the plugins.
        for plugin, reply in replies:
            updates = list(getattr(reply, "update", ()))
            if updates and self._on_update is not None:
                await self._on_update(plugin, nri_pb2.UpdateContainersRequest(update=updates))
        return replies

    def _subscribed(self, event: int) -> list[Plugin]:
        self.plugins = [p for p in self.plugins if not p.closed.is_set()]
        return [p for p in self.plugins if p.subscribed(event)]

    async def _ask(self, plugin: Plugin, method: str, request: Any, response_type: Any, fatal: bool) -> Any:
        try:
            return await plugin.call(method, request, response_type)
        except PluginGone as exc:
            log.error("NRI: dropped plugin %s: %s", plugin.label, exc)
            if fatal:  # the call cannot know what the plugin would have said: it fails, clearly
                raise PluginGone(f"{exc} (the plugin was disconnected; a retry goes on without it)") from exc
            return None
        except PluginError as exc:
            if fatal:
                raise
            log.warning("NRI: %s", exc)
            return None


def remove_socket(path: str, make_parent: bool = False) -> None:
    """A stale socket from an earlier run is removed; its directory made private to root."""
    socket_path = Path(path)
    if make_parent:
        socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()


CONTAINER_EVENTS: dict[int, tuple[str, Any]] = {
    nri_pb2.POST_CREATE_CONTAINER: ("PostCreateContainer", nri_pb2.PostCreateContainerRequest),
    nri_pb2.START_CONTAINER: ("StartContainer", nri_pb2.StartContainerRequest),
    nri_pb2.POST_START_CONTAINER: ("PostStartContainer", nri_pb2.PostStartContainerRequest),
    nri_pb2.POST_UPDATE_CONTAINER: ("PostUpdateContainer", nri_pb2.PostUpdateContainerRequest),
    nri_pb2.STOP_CONTAINER: ("StopContainer", nri_pb2.StopContainerRequest),
    nri_pb2.REMOVE_CONTAINER: ("RemoveContainer", nri_pb2.RemoveContainerRequest),
}
