"""Pod networking through a live daemon: real CNI plugins, real namespaces, real iptables.

Every check goes through CRI the way a kubelet drives it; what the kernel
holds afterwards (pins, veths, host-local reservations, nat rules) is read
from the kernel and the plugins' own state, not from the daemon.

The module daemon uses the embedded default network (bridge `crishim0`,
host-local network `crishim`), which other suites' daemons share, so leak
checks look for this test's sandbox IDs and IPs, never for an empty state.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.runtime.network import netns
from crishim.runtime.network.cni import PodRef
from crishim.runtime.network.errors import PluginError
from crishim.runtime.network.manager import PodNetwork

from tests.support import cri
from tests.support.cri import (
    container_config,
    eventually,
    exec_checked,
    exec_output,
    pod_status,
    refusal,
    remove_pod,
    run_pod,
    start_container,
)
from tests.support.daemon import Daemon, running_daemon
from tests.support.net import free_port

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not os.path.exists("/usr/lib/cni/portmap"), reason="needs containernetworking-plugins"),
]

HOST_LOCAL_DIR = Path("/var/lib/cni/networks")
DEFAULT_NETWORK = "crishim"
WEB_PORT = 8080


# -- helpers ---------------------------------------------------------------


def http_from_pod(daemon: Daemon, cid: str, ip: str, port: int) -> str:
    """GET /index.html from inside a container; the body, after checking for a 200.

    HTTP by hand over nc, so the check depends on nothing but a TCP connection from the pod.
    """
    request = f"printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}"
    reply = exec_checked(daemon, cid, ["sh", "-c", request])
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0], reply  # noqa: PT018
    return body.strip()


def http_get(url: str) -> str:
    """The body of a GET from this node."""
    return cri.http_get(url, timeout=2.0)[1].decode()


def http_get_eventually(url: str, timeout: float = 10.0) -> str:
    def probe() -> str:
        try:
            return http_get(url)
        except OSError as exc:
            return f"error: {exc}"

    return eventually(probe, lambda body: not body.startswith("error:"), timeout=timeout, what=f"GET {url}")


def host_ip() -> str:
    """The node's own non-loopback IPv4 address: the source of its default route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))  # no packet is sent for a UDP connect
        except OSError:
            pytest.skip("the node has no IPv4 default route")
        return str(s.getsockname()[0])


def iptables_mentions(token: str) -> list[str]:
    lines = []
    for table in ("nat", "filter"):
        out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=True).stdout
        lines += [line for line in out.splitlines() if token in line]
    return lines


def hostport_rules(port: int) -> list[str]:
    """portmap's per-pod DNAT chain rules for a host port (they carry no sandbox ID)."""
    return [line for line in iptables_mentions("CNI-DN-") if f"--dport {port} " in line]


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def reservations_of(network: str, sandbox_id: str) -> list[str]:
    """host-local's files for this sandbox: each reserved IP file holds the container ID."""
    d = HOST_LOCAL_DIR / network
    found = []
    for f in d.glob("*") if d.is_dir() else []:
        try:
            if f.is_file() and sandbox_id in f.read_text():
                found.append(f.name)
        except OSError:
            continue
    return found


def cache_entry(daemon: Daemon, network: str, sid: str) -> Path:
    return daemon.dir / "cni-cache" / f"{network}-{sid}.json"


def host_veth(daemon: Daemon, network: str, sid: str) -> str:
    """The host side of the pod's veth pair, as the bridge plugin reported it in ADD's result."""
    result = json.loads(cache_entry(daemon, network, sid).read_text())["result"]
    names = [i["name"] for i in result["interfaces"] if not i.get("sandbox") and i["name"].startswith("veth")]
    assert len(names) == 1, result
    return str(names[0])


def pin_of(daemon: Daemon, sid: str) -> Path:
    return daemon.dir / "run" / "netns" / sid


def network_ready(daemon: Daemon) -> pb.RuntimeCondition:
    status = daemon.runtime.Status(pb.StatusRequest(), timeout=10).status
    return next(c for c in status.conditions if c.type == "NetworkReady")


@dataclass
class WebPod:
    sid: str
    cid: str
    ip: str
    host_port: int


def start_web_pod(daemon: Daemon, image: str, name: str, host_port: int = 0) -> WebPod:
    ports = [pb.PortMapping(protocol=pb.TCP, container_port=WEB_PORT, host_port=host_port)] if host_port else []
    sid, cfg = run_pod(daemon, name, port_mappings=ports)
    script = f"mkdir -p /www && echo served-by-{name} > /www/index.html && exec httpd -f -p {WEB_PORT} -h /www"
    cid = start_container(daemon, sid, cfg, container_config("web", image, ["sh", "-c", script]))
    ip = pod_status(daemon, sid).status.network.ip
    assert ip, f"pod {name} got no IP"
    http_get_eventually(f"http://{ip}:{WEB_PORT}/index.html")
    return WebPod(sid, cid, ip, host_port)


def start_sleeper(daemon: Daemon, image: str, name: str, **pod_kwargs: Any) -> tuple[str, str]:
    sid, cfg = run_pod(daemon, name, **pod_kwargs)
    cid = start_container(daemon, sid, cfg, container_config("sleeper", image, ["sleep", "3600"]))
    return sid, cid


# -- pods on the default bridge ---------------------------------------------


@pytest.fixture(scope="module")
def web(live_daemon: Daemon, busybox: str) -> Iterator[WebPod]:
    pod = start_web_pod(live_daemon, busybox, "web-a", host_port=free_port("0.0.0.0"))
    yield pod
    remove_pod(live_daemon, pod.sid)


def test_two_pods_reach_each_other_over_the_bridge(live_daemon: Daemon, busybox: str, web: WebPod) -> None:
    sid, cid = start_sleeper(live_daemon, busybox, "client-b")
    try:
        my_ip = pod_status(live_daemon, sid).status.network.ip
        assert my_ip
        assert my_ip != web.ip
        assert http_from_pod(live_daemon, cid, web.ip, WEB_PORT) == "served-by-web-a"
        code, out = exec_output(live_daemon, cid, ["ping", "-c1", "-W2", web.ip])
        assert code == 0, out
        assert "1 packets received" in out, out
        # And through the node's hostPort, as a pod talking to a NodePort-like address does.
        assert http_from_pod(live_daemon, cid, host_ip(), web.host_port) == "served-by-web-a"
    finally:
        remove_pod(live_daemon, sid)


def test_host_reaches_container_port_at_pod_ip(web: WebPod) -> None:
    assert http_get(f"http://{web.ip}:{WEB_PORT}/index.html").strip() == "served-by-web-a"


def test_host_port_reaches_container_at_node_ip(web: WebPod) -> None:
    body = http_get_eventually(f"http://{host_ip()}:{web.host_port}/index.html")
    assert body.strip() == "served-by-web-a"


def test_host_port_reaches_container_at_localhost(web: WebPod) -> None:
    # critest's check: portmap must DNAT OUTPUT traffic to 127.0.0.1 and SNAT it off loopback.
    body = http_get_eventually(f"http://127.0.0.1:{web.host_port}/index.html")
    assert body.strip() == "served-by-web-a"


def test_pod_reaches_itself_through_its_own_host_port(live_daemon: Daemon, web: WebPod) -> None:
    # Hairpin: out of eth0 to the node, DNAT back to the same veth; needs hairpinMode and portmap's SNAT.
    assert http_from_pod(live_daemon, web.cid, host_ip(), web.host_port) == "served-by-web-a"


def test_status_ip_is_the_pods_eth0_address(live_daemon: Daemon, web: WebPod) -> None:
    out = exec_checked(live_daemon, web.cid, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
    addrs = [
        word.split("/")[0]
        for line in out.splitlines()
        for i, word in enumerate(line.split())
        if i > 0 and line.split()[i - 1] == "inet"
    ]
    assert addrs == [web.ip], out
    assert pod_status(live_daemon, web.sid).status.network.additional_ips == []


def test_dns_config_and_hostname_are_what_the_pod_asked(live_daemon: Daemon, busybox: str) -> None:
    dns = pb.DNSConfig(
        servers=["10.96.0.10", "1.1.1.1"],
        searches=["test.svc.cluster.local", "cluster.local"],
        options=["ndots:5", "timeout:2"],
    )
    sid, cid = start_sleeper(live_daemon, busybox, "dns-pod", dns_config=dns, hostname="asked-name")
    try:
        resolv = exec_checked(live_daemon, cid, ["cat", "/etc/resolv.conf"]).splitlines()
        assert resolv == [
            "nameserver 10.96.0.10",
            "nameserver 1.1.1.1",
            "search test.svc.cluster.local cluster.local",
            "options ndots:5 timeout:2",
        ]
        assert exec_checked(live_daemon, cid, ["hostname"]).strip() == "asked-name"
        assert exec_checked(live_daemon, cid, ["cat", "/etc/hostname"]).strip() == "asked-name"
        assert "asked-name" in exec_checked(live_daemon, cid, ["cat", "/etc/hosts"])
    finally:
        remove_pod(live_daemon, sid)


def test_host_network_pod_sees_host_interfaces_and_gets_no_netns(live_daemon: Daemon, busybox: str) -> None:
    security = pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(network=pb.NODE))
    sid, cid = start_sleeper(live_daemon, busybox, "hostnet", linux=pb.LinuxPodSandboxConfig(security_context=security))
    try:
        assert exec_checked(live_daemon, cid, ["readlink", "/proc/self/ns/net"]).strip() == os.readlink(
            "/proc/self/ns/net"
        )
        seen = exec_checked(live_daemon, cid, ["cat", "/proc/net/dev"])
        for name in ("lo", "crishim0", *[n for n in os.listdir("/sys/class/net") if n.startswith("eth")]):
            assert f"{name}:" in seen, (name, seen)
        assert not pin_of(live_daemon, sid).exists()
        assert not cache_entry(live_daemon, DEFAULT_NETWORK, sid).exists()
        assert reservations_of(DEFAULT_NETWORK, sid) == []
    finally:
        remove_pod(live_daemon, sid)


def test_removal_leaves_no_pin_veth_reservation_or_portmap_rule(live_daemon: Daemon, busybox: str) -> None:
    pod = start_web_pod(live_daemon, busybox, "leaky", host_port=free_port("0.0.0.0"))
    veth = host_veth(live_daemon, DEFAULT_NETWORK, pod.sid)
    assert pin_of(live_daemon, pod.sid).exists()
    assert link_exists(veth)
    assert reservations_of(DEFAULT_NETWORK, pod.sid) == [pod.ip]
    assert any(str(pod.host_port) in line for line in iptables_mentions(pod.sid))
    assert hostport_rules(pod.host_port) != []

    remove_pod(live_daemon, pod.sid)
    assert not pin_of(live_daemon, pod.sid).exists()
    assert not link_exists(veth)
    assert reservations_of(DEFAULT_NETWORK, pod.sid) == []
    assert iptables_mentions(pod.sid) == []
    assert hostport_rules(pod.host_port) == []
    assert not cache_entry(live_daemon, DEFAULT_NETWORK, pod.sid).exists()


def test_default_network_masquerades_with_one_node_wide_chain(live_daemon: Daemon, busybox: str) -> None:
    """The pod range leaving the node is masqueraded by the daemon's chain; ADD makes no per-pod chain."""
    from crishim.runtime.network.defaultconf import DEFAULT_BRIDGE, DEFAULT_POD_CIDR
    from crishim.runtime.network.masquerade import chain_name

    chain = chain_name(DEFAULT_BRIDGE)
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    rules = [line for line in nat.splitlines() if line.startswith(("-A " + chain, "-A POSTROUTING"))]
    assert f"-A {chain} -s {DEFAULT_POD_CIDR} -d {DEFAULT_POD_CIDR} -j RETURN" in rules, rules
    assert f"-A {chain} -s {DEFAULT_POD_CIDR} ! -d 224.0.0.0/4 -j MASQUERADE" in rules, rules
    assert any(line.startswith("-A POSTROUTING") and line.endswith(f"-j {chain}") for line in rules), rules

    sid, _ = start_sleeper(live_daemon, busybox, "masq")
    # The bridge plugin's ipMasq would have named the pod in a CNI-* chain comment.
    assert iptables_mentions(sid) == []
    remove_pod(live_daemon, sid)


def test_stop_then_stop_again_is_idempotent_and_frees_the_ip(live_daemon: Daemon) -> None:
    sid, _ = run_pod(live_daemon, "stop-twice")
    ip = pod_status(live_daemon, sid).status.network.ip
    assert reservations_of(DEFAULT_NETWORK, sid) == [ip]
    for _ in range(2):
        live_daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
        assert reservations_of(DEFAULT_NETWORK, sid) == []
    live_daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    assert not pin_of(live_daemon, sid).exists()


# -- a daemon whose CNI config we write ourselves ------------------------------

FAKE_PLUGIN = """#!/bin/sh
# A CNI plugin that does what the file `mode` next to it says on ADD (and DEL for fail-both).
mode=$(cat "$(dirname "$0")/mode")
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}'; exit 0 ;;
ADD) ;;
*) [ "$mode" = fail-both ] || exit 0 ;;
esac
case "$mode" in
fail|fail-both) printf '%s%s\n' '{"cniVersion":"1.0.0","code":7,' \
                  '"msg":"fake-plugin refuses this pod","details":"quota spent"}'
      exit 1 ;;
hang) sleep 3600; exit 0 ;;
esac
"""


@dataclass
class CustomNet:
    daemon: Daemon
    bin_dir: Path
    network: str
    bridge: str

    def conflist(self) -> dict[str, Any]:
        subnet = f"10.{random.randint(200, 249)}.{random.randint(0, 255)}.0/24"
        return {
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]},
                },
                {"type": "crishim-fake"},
            ],
        }

    def set_mode(self, mode: str) -> None:
        (self.bin_dir / "mode").write_text(mode)


def plugin_pids(bin_dir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", str(bin_dir)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def kill_plugins(bin_dir: Path) -> None:
    """Kill fake plugins a killed daemon left running, with the sleep they started (own session)."""
    for pid in plugin_pids(bin_dir):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def custom_net(tmp_path: Path) -> Iterator[CustomNet]:
    tag = uuid.uuid4().hex[:8]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "crishim-fake"
    plugin.write_text(FAKE_PLUGIN)
    plugin.chmod(0o755)
    extra = f'bin_dirs = ["{bin_dir}", "/usr/lib/cni"]\nplugin_timeout = 2.0\ninstall_default = false\n'
    net = None
    try:
        with running_daemon(cni_extra=extra) as daemon:
            net = CustomNet(daemon, bin_dir, f"crishim-fake-{tag}", f"csf{tag}")
            net.set_mode("fail")
            yield net
    finally:
        kill_plugins(bin_dir)
        if net is not None:
            drop_network(net)


def drop_network(net: CustomNet) -> None:
    """The bridge and host-local directory a test network leaves once its pods are gone."""
    subprocess.run(["ip", "link", "del", net.bridge], capture_output=True, check=False)
    shutil.rmtree(HOST_LOCAL_DIR / net.network, ignore_errors=True)


def write_conflist(daemon: Daemon, name: str, doc: dict[str, Any]) -> None:
    conf_dir = daemon.dir / "net.d"
    conf_dir.mkdir(exist_ok=True)
    tmp = conf_dir / f".{name}.tmp"
    tmp.write_text(json.dumps(doc))
    tmp.rename(conf_dir / name)


def test_network_ready_flips_when_a_conflist_appears(custom_net: CustomNet) -> None:
    daemon = custom_net.daemon
    before = network_ready(daemon)
    assert not before.status, before
    assert before.reason == "NetworkPluginNotReady", before
    assert str(daemon.dir / "net.d") in before.message
    refused = refusal(lambda: run_pod(daemon, "too-early"))
    assert (refused.code(), refused.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"NetworkPluginNotReady: {before.message}",
    )

    write_conflist(daemon, "20-fake.conflist", custom_net.conflist())
    after = eventually(lambda: network_ready(daemon), lambda c: c.status, timeout=5.0, what="NetworkReady")
    assert after.reason == ""

    (daemon.dir / "net.d" / "20-fake.conflist").unlink()
    gone = eventually(lambda: network_ready(daemon), lambda c: not c.status, timeout=5.0, what="NetworkReady false")
    assert gone.reason == "NetworkPluginNotReady"


def assert_nothing_left(custom: CustomNet, before_links: set[str]) -> None:
    daemon = custom.daemon
    assert list(daemon.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items) == []
    netns_dir = daemon.dir / "run" / "netns"
    assert not netns_dir.exists() or os.listdir(netns_dir) == []
    cache = daemon.dir / "cni-cache"
    assert not cache.exists() or [n for n in os.listdir(cache) if not n.startswith(".")] == []
    d = HOST_LOCAL_DIR / custom.network
    reserved = [n for n in os.listdir(d) if n[0].isdigit()] if d.is_dir() else []
    assert reserved == [], reserved
    new_veths = {n for n in os.listdir("/sys/class/net") if n.startswith("veth")} - before_links
    # Other suites' pods may add veths meanwhile; ours is on our bridge, so look there.
    ours = [n for n in new_veths if os.path.exists(f"/sys/class/net/{custom.bridge}/brif/{n}")]
    assert ours == [], ours
    sandboxes = daemon.root / "sandboxes"
    assert not sandboxes.exists() or os.listdir(sandboxes) == []


@pytest.mark.parametrize(
    ("mode", "code", "words"),
    [
        ("fail", grpc.StatusCode.INTERNAL, ["crishim-fake", "fake-plugin refuses this pod", "quota spent"]),
        ("hang", grpc.StatusCode.DEADLINE_EXCEEDED, ["crishim-fake", "did not finish ADD within 2s"]),
    ],
)
def test_failing_or_hanging_plugin_fails_run_pod_cleanly(
    custom_net: CustomNet, mode: str, code: grpc.StatusCode, words: list[str]
) -> None:
    daemon = custom_net.daemon
    write_conflist(daemon, "20-fake.conflist", custom_net.conflist())
    custom_net.set_mode(mode)
    before_links = set(os.listdir("/sys/class/net"))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        run_pod(daemon, f"doomed-{mode}")
    assert time.monotonic() - started < 20
    assert err.value.code() == code, err.value.details()
    for word in words:
        assert word in err.value.details(), err.value.details()
    assert_nothing_left(custom_net, before_links)
    out = subprocess.run(["pgrep", "-f", "-a", str(custom_net.bin_dir)], capture_output=True, text=True)
    assert out.stdout == "", out.stdout


def test_daemon_killed_during_add_cleans_up_at_the_next_start(custom_net: CustomNet) -> None:
    """The record is written last, so a crash mid-ADD leaves an unnamed pin and IP: start-up frees them."""
    daemon = custom_net.daemon
    write_conflist(daemon, "20-fake.conflist", custom_net.conflist())
    custom_net.set_mode("hang")
    before_links = set(os.listdir("/sys/class/net"))
    errors: list[grpc.StatusCode] = []

    def call() -> None:
        try:
            run_pod(daemon, "crashed-mid-add")
        except grpc.RpcError as exc:
            errors.append(exc.code())

    caller = threading.Thread(target=call)
    caller.start()
    # The fake plugin runs after bridge + host-local: once it hangs, the IP is taken.
    eventually(lambda: plugin_pids(custom_net.bin_dir), bool, timeout=5.0, what="the fake plugin hangs in ADD")
    pins = os.listdir(daemon.dir / "run" / "netns")
    assert len(pins) == 1
    sid = pins[0]
    assert len(reservations_of(custom_net.network, sid)) == 1
    daemon.kill9()
    caller.join(30)
    assert errors == [grpc.StatusCode.UNAVAILABLE]  # the daemon went away under the call
    kill_plugins(custom_net.bin_dir)

    daemon.start()
    assert reservations_of(custom_net.network, sid) == []
    assert_nothing_left(custom_net, before_links)


@pytest.mark.parametrize("cni_version", ["0.4.0", "1.0.0"])
def test_dual_stack_pod_reports_both_families(custom_net: CustomNet, test_images: Any, cni_version: str) -> None:
    """IPv4 first as the primary IP, IPv6 as an additional one, as the kubelet expects."""
    daemon = custom_net.daemon
    v4 = f"10.{random.randint(200, 249)}.{random.randint(0, 255)}.0/24"
    v6 = f"fd42:{random.randint(1, 0xFFFF):x}::/64"
    write_conflist(
        daemon,
        "20-dual.conflist",
        {
            "cniVersion": cni_version,
            "name": custom_net.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": custom_net.bridge,
                    "isGateway": True,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": v6}], [{"subnet": v4}]]},
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
    )
    eventually(lambda: network_ready(daemon), lambda c: c.status, timeout=5.0, what="NetworkReady")
    image = test_images.ref("busybox:latest")
    daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=120)
    pod = start_web_pod(daemon, image, f"dual-{cni_version}")
    network = pod_status(daemon, pod.sid).status.network
    assert ipaddress.ip_address(network.ip).version == 4
    assert ipaddress.ip_address(network.ip) in ipaddress.ip_network(v4)
    extra = [ipaddress.ip_address(i.ip) for i in network.additional_ips]
    assert len(extra) == 1
    assert extra[0] in ipaddress.ip_network(v6)
    out = exec_checked(daemon, pod.cid, ["ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global"])
    assert f"inet6 {extra[0]}/64" in out, out
    assert http_get_eventually(f"http://[{extra[0]}]:{WEB_PORT}/index.html").strip() == f"served-by-dual-{cni_version}"
    remove_pod(daemon, pod.sid)
    assert reservations_of(custom_net.network, pod.sid) == []


def test_daemon_killed_between_add_and_del_still_releases_everything(custom_net: CustomNet) -> None:
    """DEL after a restart runs what ADD ran (from the cache), even though the config file changed."""
    daemon = custom_net.daemon
    doc = custom_net.conflist()
    doc["plugins"] = [
        dict(doc["plugins"][0], ipMasq=True),
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]
    write_conflist(daemon, "20-real.conflist", doc)
    host_port = free_port("0.0.0.0")
    mapping = pb.PortMapping(protocol=pb.TCP, container_port=WEB_PORT, host_port=host_port)
    sid, _ = run_pod(daemon, "survivor", port_mappings=[mapping])
    ip = pod_status(daemon, sid).status.network.ip
    veth = host_veth(daemon, custom_net.network, sid)
    assert reservations_of(custom_net.network, sid) == [ip]
    assert any(str(host_port) in line for line in iptables_mentions(sid))
    assert hostport_rules(host_port) != []

    daemon.kill9()
    # A different network now: DEL must not use it for a pod ADDed on the old one.
    (daemon.dir / "net.d" / "20-real.conflist").unlink()
    write_conflist(
        daemon,
        "30-other.conflist",
        {"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "crishim-fake"}]},
    )
    daemon.start()

    assert pod_status(daemon, sid).status.network.ip == ip
    daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    assert reservations_of(custom_net.network, sid) == []
    assert not link_exists(veth)
    assert iptables_mentions(sid) == []
    assert hostport_rules(host_port) == []
    daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    assert not pin_of(daemon, sid).exists()
    assert not cache_entry(daemon, custom_net.network, sid).exists()


async def test_orphan_collection_frees_what_a_failed_cleanup_left(tmp_path: Path) -> None:
    """ADD fails and so does its undo DEL: the IP stays taken until start-up's orphan collection."""
    tag = uuid.uuid4().hex[:8]
    bin_dir, conf_dir, netns_dir = tmp_path / "bin", tmp_path / "net.d", tmp_path / "netns"
    bin_dir.mkdir()
    conf_dir.mkdir()
    (bin_dir / "crishim-fake").write_text(FAKE_PLUGIN)
    (bin_dir / "crishim-fake").chmod(0o755)
    net = CustomNet(None, bin_dir, f"crishim-orphan-{tag}", f"cso{tag}")  # type: ignore[arg-type]
    (conf_dir / "10-orphan.conflist").write_text(json.dumps(net.conflist()))
    network = PodNetwork(str(conf_dir), [str(bin_dir), "/usr/lib/cni"], str(tmp_path / "cache"), str(netns_dir), 5.0)
    await network.reload()
    failed, bare, known = (uuid.uuid4().hex for _ in range(3))
    try:
        net.set_mode("fail-both")
        with pytest.raises(PluginError, match="fake-plugin refuses"):
            await network.setup(PodRef(failed, "orphan", "test", "uid-orphan"))
        assert len(reservations_of(net.network, failed)) == 1
        assert not (netns_dir / failed).exists()
        await netns.create(bare, str(netns_dir))  # a crash right after pinning: no cache entry
        await netns.create(known, str(netns_dir))

        net.set_mode("fail")  # DEL works again
        collected = await network.collect_orphans({known})
        assert sorted(collected) == sorted([failed, bare])
        assert reservations_of(net.network, failed) == []
        assert os.listdir(tmp_path / "cache") == []
        assert os.listdir(netns_dir) == [known]
        assert netns.exists(str(netns_dir / known))
    finally:
        await network.close()
        for name in os.listdir(netns_dir) if netns_dir.exists() else []:
            await netns.remove(str(netns_dir / name))
        await asyncio.to_thread(netns.release_dir, str(netns_dir))
        await asyncio.to_thread(drop_network, net)
