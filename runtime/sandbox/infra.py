"""The pod's infra (pause) container and the files its containers share."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crishim.cri_api import api_pb2
from crishim.oci.conmon import ConmonResult
from crishim.oci.inputs import SandboxSpecInput
from crishim.oci.spec import build_sandbox_spec
from crishim.runtime.network import dnsfiles
from crishim.runtime.network.cni import Bandwidth, DnsSettings, PortMapping
from crishim.runtime.services import Handler, Services

PROTOCOLS = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp", api_pb2.SCTP: "sctp"}


@dataclass(frozen=True, slots=True)
class PodFiles:
    resolv_conf: Path
    hostname: Path
    hosts: Path


def sandbox_image_ref(svc: Services) -> str:
    from crishim.images.pause import PAUSE_IMAGE

    return svc.config.sandbox_image or PAUSE_IMAGE


def pause_args(image_config: dict[str, Any]) -> tuple[str, ...]:
    cfg = image_config.get("config") or {}
    args = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
    return tuple(args) if args else ("/pause",)


async def write_pod_files(
    svc: Services, bundle: Path, config: api_pb2.PodSandboxConfig, hostname: str, host_network: bool
) -> PodFiles:
    files = PodFiles(bundle / "resolv.conf", bundle / "hostname", bundle / "hosts")
    dns = config.dns_config
    await asyncio.to_thread(
        dnsfiles.write_resolv_conf, str(files.resolv_conf), list(dns.servers), list(dns.searches), list(dns.options)
    )
    if host_network:
        import socket

        await asyncio.to_thread(dnsfiles.write_hostname, str(files.hostname), socket.gethostname())
        await asyncio.to_thread(_copy_host_hosts, files.hosts)
    else:
        await asyncio.to_thread(dnsfiles.write_hostname, str(files.hostname), hostname)
        await asyncio.to_thread(dnsfiles.write_hosts, str(files.hosts), hostname, "")
    return files


def _copy_host_hosts(target: Path) -> None:
    """A host-network pod sees the node's /etc/hosts."""
    host_hosts = Path("/etc/hosts")
    target.write_text(host_hosts.read_text() if host_hosts.exists() else "")


def write_hosts(path: Path, hostname: str, ip: str) -> None:
    dnsfiles.write_hosts(str(path), hostname, ip)


def port_mappings(config: api_pb2.PodSandboxConfig) -> list[PortMapping]:
    """CNI portMappings capability entries (only those that publish a host port)."""
    return [
        PortMapping(
            host_port=pm.host_port,
            container_port=pm.container_port,
            protocol=PROTOCOLS.get(pm.protocol, "tcp"),
            host_ip=pm.host_ip,
        )
        for pm in config.port_mappings
        if pm.host_port > 0
    ]


def dns_capability(config: api_pb2.PodSandboxConfig) -> DnsSettings | None:
    dns = config.dns_config
    if not (dns.servers or dns.searches or dns.options):
        return None
    return DnsSettings(servers=tuple(dns.servers), searches=tuple(dns.searches), options=tuple(dns.options))


def bandwidth_capability(config: api_pb2.PodSandboxConfig) -> Bandwidth | None:
    """kubernetes.io/ingress-bandwidth and egress-bandwidth annotations, in bits per second."""
    ingress = config.annotations.get("kubernetes.io/ingress-bandwidth")
    egress = config.annotations.get("kubernetes.io/egress-bandwidth")
    if not ingress and not egress:
        return None
    return Bandwidth(
        ingress_rate=_parse_quantity(ingress) if ingress else 0,
        egress_rate=_parse_quantity(egress) if egress else 0,
    )


def _parse_quantity(text: str) -> int:
    suffixes = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, mult in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * mult)
    return int(float(text))


def build_spec(spec_input: SandboxSpecInput) -> dict[str, Any]:
    return build_sandbox_spec(spec_input)


async def start_infra(
    svc: Services, handler: Handler, sandbox_id: str, bundle: Path, cgroups_path: str
) -> ConmonResult:
    """conmon runs `runc create`; then `runc start` makes the pause process run; returns their PIDs."""
    from crishim.runtime.container.launch import launch

    result = await launch(
        svc, handler, sandbox_id, bundle, log_path=bundle / "infra.log", tty=False, stdin=False, stdin_once=False,
        cgroups_path=cgroups_path,
    )  # fmt: skip
    try:
        await handler.runtime.start(sandbox_id)
    except BaseException:
        await destroy_infra(svc, handler, sandbox_id)
        raise
    return result


async def destroy_infra(svc: Services, handler: Handler, sandbox_id: str) -> None:
    """Kills and deletes the infra container; absent is fine (idempotent)."""
    from crishim.runtime.container.launch import kill_and_delete

    # The pause process is never paused, so it is signalled without a `runc kill`.
    await kill_and_delete(svc, handler, sandbox_id, signal_directly=True)
