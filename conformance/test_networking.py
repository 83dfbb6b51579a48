"""critest "Networking": DNS config, hostname and port mappings of a pod."""

from __future__ import annotations

import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

HOST_PORT_FOR_MAPPING = 12000


def test_pod_dns_config_reaches_resolv_conf(daemon: Daemon) -> None:
    """[k8s.io] Networking runtime should support networking
    runtime should support DNS config [Conformance]"""
    dns = pb.DNSConfig(servers=["10.10.10.10"], searches=["google.com"], options=["ndots:8"])
    config = critest.pod_config(daemon, "create-PodSandbox-with-DNS-config", dns=dns)
    with critest.pod(daemon, config) as (pod_id, cfg):
        cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-DNS-config-test-")
        cri.start(daemon, cid)
        resolv = critest.exec_ok(daemon, cid, ["cat", "/etc/resolv.conf"])
        for line in ("nameserver 10.10.10.10", "search google.com", "options ndots:8"):
            assert line in resolv, resolv


def test_pod_hostname_is_container_hostname(daemon: Daemon) -> None:
    """[k8s.io] Networking runtime should support networking
    runtime should support set hostname [Conformance]"""
    config = critest.pod_config(daemon, "create-PodSandbox-with-hostname", hostname="test-hostname")
    with critest.pod(daemon, config) as (pod_id, cfg):
        cid = critest.create_default_container(daemon, pod_id, cfg, "container-for-hostname-test-")
        cri.start(daemon, cid)
        assert critest.exec_ok(daemon, cid, ["hostname"]).strip().lower() == "test-hostname"


def test_web_server_reachable_on_pod_ip(daemon: Daemon) -> None:
    """[k8s.io] Networking runtime should support networking runtime should support port mapping
    with only container port [Conformance]"""
    mapping = pb.PortMapping(container_port=critest.WEB_SERVER_PORT)
    with critest.web_server_pod(daemon, mapping, "container-for-container-port") as pod_id:
        critest.check_main_page(daemon, pod_id, mapping)


def test_web_server_reachable_on_host_port(daemon: Daemon) -> None:
    """[k8s.io] Networking runtime should support networking runtime should support port mapping
    with host port and container port [Conformance]"""
    mapping = pb.PortMapping(container_port=critest.WEB_SERVER_PORT, host_port=HOST_PORT_FOR_MAPPING)
    with critest.web_server_pod(daemon, mapping, "container-for-host-port") as pod_id:
        critest.check_main_page(daemon, pod_id, mapping)
