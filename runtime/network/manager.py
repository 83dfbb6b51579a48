"""PodNetwork: the one object the sandbox code talks to for pod networking.

It owns the pinned namespaces, the CNI runner and the current network
configuration, which a watcher keeps in step with the config directory so a
conflist dropped in later makes the node's network ready without a restart
(Status.NetworkReady). The watcher polls: one scandir of a small directory a
second costs far less than an inotify dependency, and it also sees files
rewritten in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Collection, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

from crishim.runtime.network import cnicache, masquerade, netns
from crishim.runtime.network.cni import (
    CniRunner,
    PodRef,
    RuntimeOptions,
)
from crishim.runtime.network.cniconf import (
    CONFIG_SUFFIXES,
    LoadOutcome,
    NetworkConfigList,
    load_conf_dir,
)
from crishim.runtime.network.cniresult import NetworkSetup
from crishim.runtime.network.defaultconf import (
    DEFAULT_BRIDGE,
    DEFAULT_FILENAME,
    DEFAULT_NETWORK,
    DEFAULT_POD_CIDR,
    install_default_conflist,
    parse_pod_cidrs,
)
from crishim.runtime.network.errors import FailedPrecondition, NetworkError

log = logging.getLogger("crishim.network")

NOT_READY_REASON = "NetworkPluginNotReady"
NO_OPTIONS = RuntimeOptions()


@dataclass(frozen=True, slots=True)
class NetworkStatus:
    """The NetworkReady condition of CRI Status."""

    ready: bool
    reason: str = ""
    message: str = ""


def _dir_signature(conf_dir: str) -> tuple[tuple[str, int, int, int], ...]:
    try:
        entries = list(os.scandir(conf_dir))
    except FileNotFoundError:
        return ()
    sig = []
    for e in entries:
        if not e.name.endswith(CONFIG_SUFFIXES):
            continue
        try:
            st = e.stat()
        except FileNotFoundError:
            continue
        sig.append((e.name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(sorted(sig))


class PodNetwork:
    """Facade over netns + CNI: setup, teardown, status, config watching."""

    def __init__(
        self,
        conf_dir: str,
        bin_dirs: Sequence[str],
        cache_dir: str,
        netns_dir: str = netns.DEFAULT_NETNS_DIR,
        plugin_timeout: float = 60.0,
        *,
        pod_cidr: str = DEFAULT_POD_CIDR,
        install_default: bool = False,
        default_network: str = DEFAULT_NETWORK,
        default_bridge: str = DEFAULT_BRIDGE,
        poll_interval: float = 1.0,
    ) -> None:
        parse_pod_cidrs(pod_cidr)
        self.conf_dir = conf_dir
        self.netns_dir = netns_dir
        self.runner = CniRunner(list(bin_dirs), cache_dir, plugin_timeout)
        self._pod_cidr = pod_cidr
        # Only a CIDR the kubelet sent is offered as the ipRanges capability;
        # the built-in default must not override a cluster network's own ranges.
        self._cidr_from_kubelet = False
        self._install_default = install_default
        self._default_network = default_network
        self._default_bridge = default_bridge
        self._poll_interval = poll_interval
        self._outcome = LoadOutcome(config=None, skipped=())
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._masqueraded: str | None = None  # the ranges the masquerade chain was made for

    # -- configuration -------------------------------------------------

    @property
    def config(self) -> NetworkConfigList | None:
        return self._outcome.config

    @property
    def pod_cidr(self) -> str:
        return self._pod_cidr

    async def start(self) -> None:
        """Install the default network if asked and the dir is empty, load, start watching."""
        if self._install_default:
            await self._write_default(replace_own=False)
        await self.reload()
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="cni-conf-watch")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def reload(self) -> None:
        """Re-read the config dir now (the watcher calls this when the dir changes)."""
        sig = await asyncio.to_thread(_dir_signature, self.conf_dir)
        outcome = await asyncio.to_thread(load_conf_dir, self.conf_dir)
        old = self._outcome.config
        self._signature = sig
        self._outcome = outcome
        new = outcome.config
        await self._ensure_masquerade()
        if (old and old.source, old and old.name) != (new and new.source, new and new.name):
            log.info(
                "CNI network config now %s",
                f"{new.name} from {new.source}" if new else f"absent in {self.conf_dir}",
            )

    def _is_own_default(self, config: NetworkConfigList | None) -> bool:
        """The loaded network is the built-in default this daemon installed (not a user's file)."""
        return (
            self._install_default
            and config is not None
            and os.path.basename(config.source) == DEFAULT_FILENAME
            and config.name == self._default_network
            and bool(config.plugins)
            and config.plugins[0].get("type") == "bridge"
            and config.plugins[0].get("bridge") == self._default_bridge
            and config.plugins[0].get("ipMasq") is not True
        )

    async def _ensure_masquerade(self) -> None:
        """The default network's node-wide masquerade chain, made again when its ranges change."""
        config = self._outcome.config
        if config is None or not self._is_own_default(config):
            return
        ranges = config.plugins[0].get("ipam", {}).get("ranges", [])
        cidrs = sorted(str(r["subnet"]) for rs in ranges for r in rs if isinstance(r, dict) and "subnet" in r)
        key = ",".join(cidrs)
        if not cidrs or key == self._masqueraded:
            return
        try:
            await asyncio.to_thread(masquerade.ensure, self._default_bridge, cidrs)
        except NetworkError as exc:  # pods still start; their traffic just cannot leave the node
            log.warning("cannot set up masquerading for %s: %s", key, exc)
            return
        self._masqueraded = key

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                sig = await asyncio.to_thread(_dir_signature, self.conf_dir)
                if sig != self._signature:
                    await self.reload()
            except Exception:  # a watcher that dies would freeze NetworkReady forever
                log.exception("watching CNI config dir %s failed", self.conf_dir)

    async def _write_default(self, *, replace_own: bool) -> str | None:
        path: str | None = await asyncio.to_thread(
            install_default_conflist,
            self.conf_dir,
            self._pod_cidr,
            network=self._default_network,
            bridge=self._default_bridge,
            replace_own=replace_own,
        )
        if path:
            log.info("installed default CNI network %s (pod CIDR %s)", path, self._pod_cidr)
        return path

    async def set_pod_cidr(self, pod_cidr: str) -> None:
        """UpdateRuntimeConfig: remember the CIDR; rewrite our own default conflist with it."""
        parse_pod_cidrs(pod_cidr)
        if pod_cidr == self._pod_cidr:
            return
        self._pod_cidr = pod_cidr
        self._cidr_from_kubelet = True
        if self._install_default:
            await self._write_default(replace_own=True)
            await self.reload()

    def status(self) -> tuple[bool, str, str]:
        """(ready, reason, message) for Status' NetworkReady condition."""
        s = self.network_status()
        return s.ready, s.reason, s.message

    def network_status(self) -> NetworkStatus:
        config = self._outcome.config
        if config is None:
            msg = f"no valid CNI network config in {self.conf_dir}"
            if self._outcome.skipped:
                msg += ": " + "; ".join(self._outcome.skipped)
            return NetworkStatus(False, NOT_READY_REASON, msg)
        missing = self.runner.missing_plugins(config)
        if missing:
            return NetworkStatus(
                False,
                NOT_READY_REASON,
                f"CNI network {config.name} ({config.source}) needs plugins {', '.join(missing)}, "
                f"not found in {':'.join(self.runner.bin_dirs)}",
            )
        return NetworkStatus(True)

    async def _require_config(self) -> NetworkConfigList:
        if self._outcome.config is None:
            await self.reload()  # the watcher may not have seen a brand-new file yet
        config = self._outcome.config
        if config is None:
            raise FailedPrecondition(f"{NOT_READY_REASON}: {self.network_status().message}")
        return config

    # -- pods ----------------------------------------------------------

    async def setup(self, pod: PodRef, options: RuntimeOptions = NO_OPTIONS) -> tuple[str, NetworkSetup]:
        """Create and pin the pod's namespace and run CNI ADD; undo both on any failure."""
        config = await self._require_config()
        async with AsyncExitStack() as undo:
            path = await netns.create(pod.sandbox_id, self.netns_dir)
            undo.push_async_callback(netns.remove, path)
            result = await self.attach(path, pod, options, config=config)
            undo.pop_all()
        return path, result

    async def create_netns(self, sandbox_id: str) -> str:
        """The pod's pinned namespace alone (ready: a config is there), so the infra container
        can be started in it while `attach` wires it up."""
        await self._require_config()
        return await netns.create(sandbox_id, self.netns_dir)

    async def attach(
        self, path: str, pod: PodRef, options: RuntimeOptions = NO_OPTIONS, *, config: NetworkConfigList | None = None
    ) -> NetworkSetup:
        """CNI ADD into the namespace at `path`; a failed ADD is undone with DEL.

        The pod CIDR offered as ipRanges is the node's, set here whatever `options` holds.
        """
        config = config or await self._require_config()
        ip_ranges = tuple(parse_pod_cidrs(self._pod_cidr)) if self._cidr_from_kubelet else ()
        runtime_config = dataclasses.replace(options, ip_ranges=ip_ranges).capability_args()
        async with AsyncExitStack() as undo:
            undo.push_async_callback(self._del_quietly, config, pod, path)
            result = await self.runner.add(
                config, pod, path, runtime_config, skip_idle_portmap=self._is_own_default(config)
            )
            undo.pop_all()
        return result

    async def _del_quietly(self, config: NetworkConfigList, pod: PodRef, path: str) -> None:
        try:
            await self.runner.delete(config, pod, path, skip_idle_portmap=self._is_own_default(config))
        except NetworkError as exc:
            log.warning("CNI DEL after a failed ADD of %s also failed: %s", pod.sandbox_id, exc)

    async def teardown(
        self,
        sandbox_id: str,
        netns_path: str,
        pod_name: str = "",
        pod_namespace: str = "",
        pod_uid: str = "",
    ) -> None:
        """CNI DEL (StopPodSandbox); idempotent, and still frees the IP when the namespace is gone.

        The namespace itself stays until remove_netns (RemovePodSandbox), as
        the infra container may still be in it.
        """
        pod = PodRef(sandbox_id, pod_name, pod_namespace, pod_uid)
        path = netns_path if netns_path and netns.exists(netns_path) else ""
        config = self._outcome.config
        await self.runner.delete(config, pod, path, skip_idle_portmap=self._is_own_default(config))

    async def remove_netns(self, netns_path: str) -> None:
        """Unpin the namespace (RemovePodSandbox); fine if already gone."""
        if netns_path:
            await netns.remove(netns_path)

    async def collect_orphans(self, known_sandboxes: Collection[str]) -> list[str]:
        """Free the network of every sandbox no record names; returns their IDs.

        Called at start-up. A crash between CNI ADD and the sandbox record, or
        a failed ADD whose undo DEL failed too, leaves a pin, a cache entry or
        both, and with them an IP and iptables rules that nothing else would
        ever release. DEL runs from the cache; a DEL that fails again keeps its
        cache entry, so the next start-up retries it.
        """
        known = set(known_sandboxes)
        ids = await asyncio.to_thread(cnicache.cached_ids, self.runner.cache_dir)
        try:
            ids |= set(await asyncio.to_thread(os.listdir, self.netns_dir))
        except FileNotFoundError:
            pass
        collected = []
        for sandbox_id in sorted(ids - known):
            try:
                path = netns.pin_path(sandbox_id, self.netns_dir)
            except NetworkError:
                continue  # not a name we would ever have pinned
            try:
                await self.teardown(sandbox_id, path)
            except NetworkError as exc:
                log.warning("CNI DEL for orphaned sandbox %s failed, retried at next start: %s", sandbox_id[:13], exc)
            await self.remove_netns(path)
            collected.append(sandbox_id)
        return collected

    async def check(self, sandbox_id: str, netns_path: str) -> None:
        """CNI CHECK with the cached result: raises if the pod's network drifted."""
        await self.runner.check(PodRef(sandbox_id), netns_path)

    async def cached_setup(self, sandbox_id: str) -> NetworkSetup | None:
        """The IPs ADD gave the pod, read from the cache (PodSandboxStatus after a restart)."""
        return await self.runner.cached_setup(sandbox_id)
