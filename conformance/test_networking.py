"""critest "Networking": DNS config, hostname and port mappings of a pod."""

from __future__ import annotations

import pytest
from crishim.cri_api import api_pb2 as pb

from conformance import cri
from conformance.cri import WEB_SERVER_IMAGE

pytestmark = pytest.mark.root

WEB_PORT = 80
HOST_PORT_FOR_MAPPING = 12000


def web_server_container(
    daemon,
    pod_id: str,
    cfg: pb.PodSandboxConfig,
    prefix: str,  # type: ignore[no-untyped-def]
    image: str = WEB_SERVER_IMAGE,
) -> str:
    """critest's createWebServerContainer: the image's own command, an empty Linux config."""
    return cri.create_container(daemon, pod_id, cfg, cri.container_config(prefix, image=image, command=None))


def port_mapping_pod(
    daemon,
    mappings: list[pb.PortMapping],
    *,  # type: ignore[no-untyped-def]
    host_network: bool = False,
) -> pb.PodSandboxConfig:
    """critest's createPodSandboxWithPortMapping config."""
    security = None
    if host_network:
        security = pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(network=pb.NODE))
    return cri.pod_config(
        daemon, "create-PodSandbox-with-port-mapping", port_mappings=mappings, security_context=security
    )


def test_pod_dns_config_reaches_resolv_conf(daemon) -> None:  # type: ignore[no-untyped-def]
    """[k8s.io] Networking runtime should support networking
    runtime should support DNS config [Conformance]"""
    dns = pb.DNSConfig(servers=["10.10.10.10"], searches=["google.com"], options=["ndots:8"])
    config = cri.pod_config(daemon, "create-PodSandbox-with-DNS-config", dns=dns)
    with cri.pod(daemon, config) as (pod_id, cfg):
        cid = cri.create_default_container(daemon, pod_id, cfg, "container-for-DNS-config-test-")
        cri.start(daemon, cid)
        resolv = cri.exec_ok(daemon, cid, ["cat", "/etc/resolv.conf"])
        for line in ("nameserver 10.10.10.10", "search google.com", "options ndots:8"):
            assert line in resolv, resolv


def test_pod_hostname_is_container_hostname(daemon) -> None:  # type: ignore[no-untyped-def]
    """[k8s.io] Networking runtime should support networking
    runtime should support set hostname [Conformance]"""
    config = cri.pod_config(daemon, "create-PodSandbox-with-hostname", hostname="test-hostname")
    with cri.pod(daemon, config) as (pod_id, cfg):
        cid = cri.create_default_container(daemon, pod_id, cfg, "container-for-hostname-test-")
        cri.start(daemon, cid)
        assert cri.exec_ok(daemon, cid, ["hostname"]).strip().lower() == "test-hostname"


def test_web_server_reachable_on_pod_ip(daemon) -> None:  # type: ignore[no-untyped-def]
    """[k8s.io] Networking runtime should support networking runtime should support port mapping
    with only container port [Conformance]"""
    config = port_mapping_pod(daemon, [pb.PortMapping(container_port=WEB_PORT)])
    with cri.pod(daemon, config) as (pod_id, cfg):
        cid = web_server_container(daemon, pod_id, cfg, "container-for-container-port")
        cri.start(daemon, cid)
        cri.check_main_page(daemon, pod_id, 0, WEB_PORT)


def test_web_server_reachable_on_host_port(daemon) -> None:  # type: ignore[no-untyped-def]
    """[k8s.io] Networking runtime should support networking runtime should support port mapping
    with host port and container port [Conformance]"""
    mapping = pb.PortMapping(container_port=WEB_PORT, host_port=HOST_PORT_FOR_MAPPING)
    with cri.pod(daemon, port_mapping_pod(daemon, [mapping])) as (pod_id, cfg):
        cid = web_server_container(daemon, pod_id, cfg, "container-for-host-port")
        cri.start(daemon, cid)
        cri.check_main_page(daemon, "", HOST_PORT_FOR_MAPPING, 0)
