"""Running CNI plugins as the CNI specification says a runtime must.

ADD runs the list's plugins in order, each given the previous one's result
as `prevResult`; DEL runs them in reverse with the cached ADD result; CHECK
runs them in order with it. Each call is a subprocess in its own session,
so a plugin that overruns the timeout is killed together with the
delegated IPAM plugin it spawned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from crishim.runtime.network import cnicache
from crishim.runtime.network import netns as netns_mod
from crishim.runtime.network.cniconf import NetworkConfigList, config_from_raw, version_tuple
from crishim.runtime.network.cniresult import NetworkSetup, parse_result
from crishim.runtime.network.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PluginError,
)

log = logging.getLogger("crishim.network")

IFNAME = "eth0"
# CNI error code 3: "container unknown or does not exist"; DEL treats it as done.
_CODE_UNKNOWN_CONTAINER = 3
_GONE_WORDS = ("not found", "no such", "does not exist", "doesn't exist")


@dataclass(frozen=True, slots=True)
class PodRef:
    """Who the network is for; becomes CNI_CONTAINERID and CNI_ARGS."""

    sandbox_id: str
    name: str = ""
    namespace: str = ""
    uid: str = ""

    def cni_args(self) -> str:
        # IgnoreUnknown=1 lets plugins that do not know the K8S_* keys accept them.
        return ";".join(
            [
                "IgnoreUnknown=1",
                f"K8S_POD_NAMESPACE={self.namespace}",
                f"K8S_POD_NAME={self.name}",
                f"K8S_POD_INFRA_CONTAINER_ID={self.sandbox_id}",
                f"K8S_POD_UID={self.uid}",
            ]
        )


@dataclass(frozen=True, slots=True)
class PortMapping:
    """A CRI PortMapping: host_port on host_ip forwards to container_port in the pod."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def to_cni(self) -> dict[str, Any]:
        proto = self.protocol.lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise InvalidArgument(f"port mapping protocol {self.protocol!r} is not tcp, udp or sctp")
        for port in (self.host_port, self.container_port):
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is outside 1-65535")
        out: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": proto,
        }
        if self.host_ip:
            out["hostIP"] = self.host_ip
        return out


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """Pod traffic shaping (kubernetes.io/ingress-bandwidth annotations), bits per second."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    def to_cni(self) -> dict[str, int]:
        out = {}
        if self.ingress_rate:
            out["ingressRate"] = self.ingress_rate
            out["ingressBurst"] = self.ingress_burst or 2**31 - 1
        if self.egress_rate:
            out["egressRate"] = self.egress_rate
            out["egressBurst"] = self.egress_burst or 2**31 - 1
        return out


@dataclass(frozen=True, slots=True)
class DnsSettings:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Values offered to plugins that declare the matching capability."""

    port_mappings: tuple[PortMapping, ...] = ()
    bandwidth: Bandwidth | None = None
    dns: DnsSettings | None = None
    ip_ranges: tuple[str, ...] = field(default=())

    def capability_args(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.port_mappings:
            out["portMappings"] = [p.to_cni() for p in self.port_mappings]
        if self.bandwidth is not None and self.bandwidth.to_cni():
            out["bandwidth"] = self.bandwidth.to_cni()
        if self.dns is not None:
            out["dns"] = {
                "servers": list(self.dns.servers),
                "searches": list(self.dns.searches),
                "options": list(self.dns.options),
            }
        if self.ip_ranges:
            out["ipRanges"] = [[{"subnet": r}] for r in self.ip_ranges]
        return out


def plugin_config(
    netconf: NetworkConfigList,
    plugin: dict[str, Any],
    runtime_config: dict[str, Any],
    prev_result: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON one plugin reads on stdin: its own block plus name, version, runtimeConfig, prevResult."""
    conf = dict(plugin)
    conf["name"] = netconf.name
    conf["cniVersion"] = netconf.cni_version
    caps = plugin.get("capabilities")
    if isinstance(caps, dict):
        rc = {k: v for k, v in runtime_config.items() if caps.get(k) is True}
        if rc:
            conf["runtimeConfig"] = rc
        else:
            conf.pop("runtimeConfig", None)
    if prev_result is not None:
        conf["prevResult"] = prev_result
    else:
        conf.pop("prevResult", None)
    return conf


def deletes_interface_early(netconf: NetworkConfigList) -> bool:
    """True for a network whose DEL works the same when its interface is already gone.

    That is the bridge plugin with host-local IPAM (DEL releases the IP from its own
    store whether or not the link is there), optionally followed by portmap (its rules
    are found from the cached result), the shape of the built-in default network. With
    ipMasq the bridge plugin finds the rules to remove from the link's addresses, and
    other IPAMs (dhcp) or plugins may need the link: for those DEL runs alone.
    """
    types = netconf.plugin_types
    if not types or types[0] != "bridge" or any(t != "portmap" for t in types[1:]):
        return False
    bridge = netconf.plugins[0]
    ipam = bridge.get("ipam")
    return bridge.get("ipMasq") is not True and isinstance(ipam, dict) and ipam.get("type") == "host-local"


def plugins_for_pod(
    netconf: NetworkConfigList, runtime_config: dict[str, Any], *, skip_idle_portmap: bool
) -> list[tuple[int, dict[str, Any]]]:
    """The list's plugins (with their index) that ADD and DEL run for a pod.

    With `skip_idle_portmap` (the built-in default network, whose list this daemon wrote)
    portmap is left out for a pod that maps no port: its ADD would hand the previous result
    on unchanged and its DEL find nothing to remove, each a plugin run (5 and 11 ms here) on
    the pod's start and stop. The decision rests on the runtime config the cache keeps, so
    a pod's DEL always agrees with its ADD; a pod with port mappings runs it as ever.
    """
    skip = skip_idle_portmap and not runtime_config.get("portMappings")
    return [(i, p) for i, p in enumerate(netconf.plugins) if not (skip and p.get("type") == "portmap")]


class CniRunner:
    """Executes a network configuration list's plugins and keeps the result cache."""

    def __init__(self, bin_dirs: list[str], cache_dir: str, plugin_timeout: float = 60.0) -> None:
        self.bin_dirs = list(bin_dirs)
        self.cache_dir = cache_dir
        self.plugin_timeout = plugin_timeout

    def find_plugin(self, ptype: str) -> str:
        for d in self.bin_dirs:
            path = os.path.join(d, ptype)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise FailedPrecondition(
            f"CNI plugin {ptype!r} not found in {':'.join(self.bin_dirs)}; install it or fix cni.bin_dirs"
        )

    def missing_plugins(self, netconf: NetworkConfigList) -> list[str]:
        missing = []
        for ptype in netconf.plugin_types:
            try:
                self.find_plugin(ptype)
            except FailedPrecondition:
                missing.append(ptype)
        return missing

    async def _exec(
        self, command: str, ptype: str, conf: dict[str, Any], pod: PodRef, netns: str, cni_args: str
    ) -> dict[str, Any] | None:
        path = self.find_plugin(ptype)
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.sandbox_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": IFNAME,
            "CNI_PATH": os.pathsep.join(self.bin_dirs),
            "CNI_ARGS": cni_args,
        }
        proc = await asyncio.create_subprocess_exec(
            path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), timeout=self.plugin_timeout)
        except BaseException as exc:
            # Timeout or cancellation: kill the plugin and whatever it delegated to.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise DeadlineExceeded(
                    f"CNI plugin {ptype} did not finish {command} within {self.plugin_timeout:g}s and was killed"
                ) from None
            raise
        if proc.returncode != 0:
            raise self._error(ptype, command, proc.returncode or -1, out, err)
        if command != "ADD":
            return None
        try:
            result = json.loads(out)
        except ValueError:
            raise Internal(f"CNI plugin {ptype} printed no JSON result for ADD: {out[:200]!r} {err[:200]!r}") from None
        if not isinstance(result, dict):
            raise Internal(f"CNI plugin {ptype} printed a result that is not a JSON object")
        return result

    @staticmethod
    def _error(ptype: str, command: str, rc: int, out: bytes, err: bytes) -> PluginError:
        try:
            doc = json.loads(out)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and ("msg" in doc or "code" in doc):
            code = doc.get("code")
            return PluginError(
                ptype,
                command,
                int(code) if isinstance(code, int) else rc,
                str(doc.get("msg", "")),
                str(doc.get("details", "")),
            )
        text = (err or out).decode(errors="replace").strip() or f"exit status {rc}"
        return PluginError(ptype, command, rc, text[:2000])

    async def add(
        self,
        netconf: NetworkConfigList,
        pod: PodRef,
        netns: str,
        runtime_config: dict[str, Any],
        *,
        skip_idle_portmap: bool = False,
    ) -> NetworkSetup:
        """CNI ADD through the list (plugins_for_pod); the result is cached for CHECK and DEL."""
        entry = cnicache.CacheEntry(
            network=netconf.name,
            container_id=pod.sandbox_id,
            ifname=IFNAME,
            netns=netns,
            cni_args=pod.cni_args(),
            config=netconf.raw,
            runtime_config=runtime_config,
        )
        await asyncio.to_thread(cnicache.write_entry, self.cache_dir, entry)
        prev: dict[str, Any] | None = None
        for _, plugin in plugins_for_pod(netconf, runtime_config, skip_idle_portmap=skip_idle_portmap):
            conf = plugin_config(netconf, plugin, runtime_config, prev)
            result = await self._exec("ADD", str(plugin["type"]), conf, pod, netns, entry.cni_args)
            prev = result if result is not None else prev
        final = prev or {"cniVersion": netconf.cni_version}
        setup = parse_result(final)
        await asyncio.to_thread(
            cnicache.write_entry,
            self.cache_dir,
            dataclasses.replace(entry, result=final),
        )
        return setup

    async def delete(
        self, current: NetworkConfigList | None, pod: PodRef, netns: str, *, skip_idle_portmap: bool = False
    ) -> None:
        """CNI DEL, idempotent: uses what ADD cached; without a cache, the current config.

        A plugin's "not found" answer counts as already deleted. The cache
        entry goes only once every plugin succeeded, so a failed DEL can be
        retried by the next StopPodSandbox.
        """
        entries = await asyncio.to_thread(cnicache.find_entries, self.cache_dir, pod.sandbox_id)
        if not entries:
            if current is None:
                log.info("no CNI cache and no config for %s: nothing to delete", pod.sandbox_id)
                return
            await self._del_list(current, pod, netns, {}, None, pod.cni_args())  # no cache: every plugin
            return
        for entry in entries:
            netconf = config_from_raw(entry.config)
            # The later plugins' DEL needs no link: the interface is retired meanwhile.
            retired = asyncio.ensure_future(self._retire_interface(netconf, pod, netns))
            try:
                await self._del_list(
                    netconf, pod, netns, entry.runtime_config, entry.result, entry.cni_args,
                    before_first=retired, skip_idle_portmap=skip_idle_portmap,
                )  # fmt: skip
            finally:
                await retired
            await asyncio.to_thread(cnicache.remove_entry, self.cache_dir, entry.network, pod.sandbox_id)

    async def _retire_interface(self, netconf: NetworkConfigList, pod: PodRef, netns: str) -> None:
        """For a network that can take it, the pod's interface is renamed away and deleted in
        the background while the plugins' DEL runs (netns.retire_interface)."""
        if not netns or not deletes_interface_early(netconf):
            return
        try:
            await netns_mod.retire_interface(netns, IFNAME)
        except Exception as exc:  # noqa: BLE001 - the bridge plugin's DEL deletes it then
            log.debug("CNI DEL of %s: %s not retired first: %s", pod.sandbox_id, IFNAME, exc)

    async def _del_list(
        self,
        netconf: NetworkConfigList,
        pod: PodRef,
        netns: str,
        runtime_config: dict[str, Any],
        result: dict[str, Any] | None,
        cni_args: str,
        before_first: Awaitable[None] | None = None,
        skip_idle_portmap: bool = False,
    ) -> None:
        """DEL through the list in reverse; `before_first` is awaited before the first plugin's."""
        # prevResult on DEL only exists from 0.4.0 on (CNI spec, "Deleting").
        prev = result if result is not None and version_tuple(netconf.cni_version) >= (0, 4, 0) else None
        for index, plugin in reversed(plugins_for_pod(netconf, runtime_config, skip_idle_portmap=skip_idle_portmap)):
            if index == 0 and before_first is not None:
                await before_first
            conf = plugin_config(netconf, plugin, runtime_config, prev)
            try:
                await self._exec("DEL", str(plugin["type"]), conf, pod, netns, cni_args)
            except PluginError as exc:
                lowered = f"{exc.msg} {exc.details}".lower()
                if exc.code == _CODE_UNKNOWN_CONTAINER or any(w in lowered for w in _GONE_WORDS):
                    log.info("CNI DEL of %s: %s reports it gone: %s", pod.sandbox_id, exc.plugin, exc.msg)
                    continue
                raise

    async def check(self, pod: PodRef, netns: str) -> None:
        """CNI CHECK against the cached ADD result; a no-op for configs that cannot check."""
        entries = await asyncio.to_thread(cnicache.find_entries, self.cache_dir, pod.sandbox_id)
        if not entries:
            raise FailedPrecondition(f"no cached CNI ADD result for sandbox {pod.sandbox_id}")
        for entry in entries:
            netconf = config_from_raw(entry.config)
            if netconf.disable_check or version_tuple(netconf.cni_version) < (0, 4, 0):
                continue
            if entry.result is None:
                raise FailedPrecondition(f"CNI ADD for sandbox {pod.sandbox_id} never finished")
            for plugin in netconf.plugins:
                conf = plugin_config(netconf, plugin, entry.runtime_config, entry.result)
                await self._exec("CHECK", str(plugin["type"]), conf, pod, netns, entry.cni_args)

    async def cached_setup(self, sandbox_id: str) -> NetworkSetup | None:
        """The cached ADD result for a sandbox (e.g. PodSandboxStatus after a restart)."""
        for entry in await asyncio.to_thread(cnicache.find_entries, self.cache_dir, sandbox_id):
            if entry.result is not None:
                return parse_result(entry.result)
        return None
