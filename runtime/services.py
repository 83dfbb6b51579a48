"""The composition root: every long-lived part of the daemon, built once at start-up.

Servicers get one `Services` and call domain functions with it; nothing else
holds global state.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crishim.oci.features import RuntimeFeatures
from crishim.runtime.config import Config, NriConfig
from crishim.runtime.errors import InvalidArgument, NotFound
from crishim.runtime.events import EventBus
from crishim.runtime.locks import KeyedLocks
from crishim.runtime.names import NameRegistry
from crishim.runtime.nri.adaptation import Nri
from crishim.runtime.state.store import StateStore

if TYPE_CHECKING:  # the real types, without importing them at start-up
    from crishim.cgroups.oomkills import OomKillLog
    from crishim.cgroups.stats import StatsSampler
    from crishim.images.store import ImageStore
    from crishim.oci.runtime import OciRuntime
    from crishim.runtime.container.monitor import ExitMonitor
    from crishim.runtime.network.manager import PodNetwork
    from crishim.runtime.sandbox.pidholder import HolderRoot
    from crishim.runtime.streaming.server import StreamingServer

log = logging.getLogger("crishim.services")

POD_CIDR_SETTING = "pod_cidr"


@dataclass
class Handler:
    """One runtime handler: its OCI runtime wrapper and probed features."""

    name: str
    runtime: OciRuntime
    features: RuntimeFeatures


@dataclass
class Services:
    config: Config
    state: StateStore
    images: ImageStore
    network: PodNetwork
    handlers: dict[str, Handler]
    cgroup_driver: str
    # The handler serving an empty runtime_handler (the configured one, or the one chosen at start-up).
    default_handler: str = "runc"
    events: EventBus = field(default_factory=EventBus)
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    names: NameRegistry = field(default_factory=NameRegistry)
    # NRI plugins; disabled until start() has recovered the state they are synchronised with.
    nri: Nri = field(default_factory=lambda: Nri(NriConfig(enable=False)))
    # Set by bootstrap right after construction (they need the Services they serve).
    streaming: StreamingServer = field(init=False)
    monitor: ExitMonitor = field(init=False)
    stats: StatsSampler = field(init=False)
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    stop_metrics: Any = None
    # The kernel's record of OOM kills (/dev/kmsg), None where it cannot be read.
    oom_log: OomKillLog | None = None
    # What holds shared PID namespaces; None: such pods keep a pause container.
    pid_holder: HolderRoot | None = None

    @classmethod
    async def start(cls, config: Config) -> Services:
        from crishim.runtime.bootstrap import build_services

        svc = await build_services(config)
        await svc.start_nri()
        return svc

    async def start_nri(self) -> None:
        """Starts NRI once the records are reconciled: plugins are synchronised with them."""
        from crishim.runtime.nri import steps
        from crishim.runtime.version import __version__

        async def on_update(plugin: Any, request: Any) -> Any:
            return await steps.plugin_updates(self, plugin, request)

        self.nri = Nri(self.config.nri, __version__)
        await self.nri.start(lambda: steps.snapshot(self), on_update)

    async def close(self) -> None:
        await self.nri.close()
        for task in self.background:
            task.cancel()
        for task in self.background:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        if hasattr(self, "monitor"):
            self.monitor.close()
        if hasattr(self, "streaming"):
            await self.streaming.stop()
        await self.network.close()
        if self.stop_metrics is not None:
            self.stop_metrics()
        self.events.close()
        if self.oom_log is not None:
            self.oom_log.close()
        await self.images.aclose()
        self.state.close()

    # -- lookups used by many flows -------------------------------------------
    def handler(self, name: str) -> Handler:
        name = name or self.default_handler
        handler = self.handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            raise InvalidArgument(f"runtime handler {name!r} is not configured (configured: {known})")
        return handler

    def handler_features(self) -> dict[str, RuntimeFeatures]:
        return {name: h.features for name, h in self.handlers.items()}

    def network_status(self) -> tuple[bool, str, str]:
        ready, reason, message = self.network.status()
        return bool(ready), reason, message

    def verbose_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "handlers": {
                name: {
                    "path": self.config.runtimes[name].path,
                    "type": self.config.runtimes[name].type,
                    "root": str(self.config.handler_root(name)),
                    "recursive_read_only": h.features.recursive_read_only,
                    "idmap_mounts": h.features.idmap_mounts,
                    "user_namespaces": h.features.user_namespaces,
                }
                for name, h in self.handlers.items()
            },
            "cgroupDriver": self.cgroup_driver,
            "podCIDR": self.pod_cidr,
            "pid": os.getpid(),
        }
        config = self.network.config
        info["cniconfig"] = {"confDir": self.network.conf_dir, "network": getattr(config, "name", None)}
        info["streamingURL"] = self.streaming.base_url
        info["nri"] = self.nri.info()
        return info

    @property
    def pod_cidr(self) -> str:
        return self.state.get_setting(POD_CIDR_SETTING) or self.config.cni.pod_cidr

    async def set_pod_cidr(self, cidr: str) -> None:
        self.state.set_setting(POD_CIDR_SETTING, cidr)
        await self.network.set_pod_cidr(cidr)

    def resolve_sandbox_id(self, wanted: str, missing_ok: bool = False) -> str:
        """A full ID or a unique prefix of one (crictl accepts prefixes)."""
        return _resolve(wanted, self.state.sandboxes.ids_matching(wanted), "pod sandbox", missing_ok)

    def resolve_container_id(self, wanted: str, missing_ok: bool = False) -> str:
        return _resolve(wanted, self.state.containers.ids_matching(wanted), "container", missing_ok)

    # -- paths ------------------------------------------------------------------
    def sandbox_dir(self, sandbox_id: str) -> Path:
        return Path(self.config.root) / "sandboxes" / sandbox_id

    def container_dir(self, container_id: str) -> Path:
        return Path(self.config.root) / "containers" / container_id


def _resolve(wanted: str, matches: list[str], kind: str, missing_ok: bool) -> str:
    """`matches`: the exact ID alone, or up to two IDs starting with `wanted`."""
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidArgument(f"{kind} ID prefix {wanted!r} is ambiguous: it matches {len(matches)} {kind}s")
    if missing_ok:
        return wanted
    raise NotFound(f"{kind} {wanted!r} not found")
