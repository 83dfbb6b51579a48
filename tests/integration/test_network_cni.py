"""Pod networking end to end: real CNI plugins from /usr/lib/cni, real namespaces.

Every test gets its own config dir, network name, bridge and /24, so these
run beside other suites on the same machine; everything made is removed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from crishim.runtime.network import netns
from crishim.runtime.network.cni import PodRef, PortMapping, RuntimeOptions
from crishim.runtime.network.defaultconf import install_default_conflist
from crishim.runtime.network.errors import DeadlineExceeded, FailedPrecondition, PluginError
from crishim.runtime.network.manager import PodNetwork

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not os.path.exists("/usr/lib/cni/bridge"), reason="needs containernetworking-plugins"),
]

CNI_BIN = "/usr/lib/cni"
HOST_LOCAL_DIR = "/var/lib/cni/networks"


@dataclass
class NetEnv:
    base: str
    conf_dir: str
    cache_dir: str
    netns_dir: str
    bin_dir: str
    network: str
    bridge: str
    subnet: str
    gateway: str
    pods: list[tuple[str, str]] = field(default_factory=list)

    def make(self, *, install: bool = True, timeout: float = 20.0, bin_dirs: list[str] | None = None) -> PodNetwork:
        if install:
            install_default_conflist(self.conf_dir, self.subnet, network=self.network, bridge=self.bridge)
        return PodNetwork(
            self.conf_dir,
            bin_dirs or [CNI_BIN],
            self.cache_dir,
            self.netns_dir,
            timeout,
            poll_interval=0.1,
        )

    def sandbox_id(self) -> str:
        return uuid.uuid4().hex


@pytest.fixture
def env() -> Iterator[NetEnv]:
    tag = uuid.uuid4().hex[:8]
    octet2, octet3 = random.randint(200, 249), random.randint(0, 255)
    base = tempfile.mkdtemp(prefix="crishim-net-")
    e = NetEnv(
        base=base,
        conf_dir=os.path.join(base, "conf"),
        cache_dir=os.path.join(base, "cache"),
        netns_dir=os.path.join(base, "netns"),
        bin_dir=os.path.join(base, "bin"),
        network=f"crishim-test-{tag}",
        bridge=f"cst{tag}",
        subnet=f"10.{octet2}.{octet3}.0/24",
        gateway=f"10.{octet2}.{octet3}.1",
    )
    os.makedirs(e.conf_dir)
    os.makedirs(e.bin_dir)
    try:
        yield e
    finally:
        _cleanup(e)


def _cleanup(e: NetEnv) -> None:
    async def undo() -> None:
        pn = e.make(install=False)
        await pn.reload()
        for sid, path in e.pods:
            try:
                await pn.teardown(sid, path)
            except Exception:  # noqa: S110 - best effort, the asserts already ran
                pass
            await pn.remove_netns(path)

    asyncio.run(undo())
    for sid, _ in e.pods:
        _drop_nat_rules(sid)
    if os.path.isdir(e.netns_dir):
        for name in os.listdir(e.netns_dir):
            asyncio.run(netns.remove(os.path.join(e.netns_dir, name)))
        netns.release_dir(e.netns_dir)
    subprocess.run(["ip", "link", "del", e.bridge], capture_output=True, check=False)
    shutil.rmtree(os.path.join(HOST_LOCAL_DIR, e.network), ignore_errors=True)
    shutil.rmtree(e.base, ignore_errors=True)


def _drop_nat_rules(sandbox_id: str) -> None:
    """Remove nat rules that name a test sandbox and the chains they jump to.

    The bridge plugin can only undo its ipMasq rules while the pod's eth0
    still exists, so a test that deletes the namespace before DEL leaves them.
    """
    chains = set()
    for line in _iptables_mentions(sandbox_id):
        if not line.startswith("-A "):
            continue
        argv = shlex.split(line)
        if "-j" in argv:
            target = argv[argv.index("-j") + 1]
            if target.startswith("CNI-") and not target.startswith("CNI-HOSTPORT"):
                chains.add(target)
        subprocess.run(["iptables", "-t", "nat", "-D", *argv[1:]], capture_output=True, check=False)
    for chain in chains:
        subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True, check=False)
        subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True, check=False)


async def _setup(pn: PodNetwork, e: NetEnv, ports: list[PortMapping] | None = None) -> tuple[str, str, str]:
    sid = e.sandbox_id()
    pod = PodRef(sid, f"pod-{sid[:6]}", "default", str(uuid.uuid4()))
    path, result = await pn.setup(pod, RuntimeOptions(port_mappings=tuple(ports or ())))
    e.pods.append((sid, path))
    return sid, path, result.ip


def _present(path: str) -> bool:
    return os.path.exists(path)


def _in_ns(path: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=10)


def _iptables_mentions(token: str) -> list[str]:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if token in line]


def _host_veths_for(path: str) -> list[str]:
    """Host-side veth peers of the namespace's eth0, found through its peer ifindex."""
    # sysfs still shows the host's devices after nsenter, so ask `ip`: "2: eth0@if7: ..."
    out = _in_ns(path, "ip", "-o", "link", "show", "dev", "eth0")
    if out.returncode != 0 or "@if" not in out.stdout:
        return []
    peer = int(out.stdout.split("@if", 1)[1].split(":", 1)[0])
    return [n for n in os.listdir("/sys/class/net") if _read_int(f"/sys/class/net/{n}/ifindex") == peer]


def _read_int(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return -1


class _Httpd:
    """busybox httpd serving one file inside a namespace."""

    def __init__(self, path: str, port: int, body: str, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write(body)
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={path}", "busybox", "httpd", "-f", "-p", str(port), "-h", root]
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _curl(url: str) -> str:
    deadline = time.monotonic() + 5
    while True:
        out = subprocess.run(["curl", "-s", "--noproxy", "*", "--max-time", "2", url], capture_output=True, text=True)
        if out.returncode == 0 or time.monotonic() > deadline:
            return out.stdout
        time.sleep(0.1)


async def test_two_pods_on_the_bridge_ping_each_other(env: NetEnv) -> None:
    pn = env.make()
    await pn.start()
    try:
        _, path_a, ip_a = await _setup(pn, env)
        _, path_b, ip_b = await _setup(pn, env)
        assert ip_a != ip_b
        assert (await netns.addresses(path_a, "eth0"))[0].startswith(ip_a + "/")
        ping = await asyncio.to_thread(_in_ns, path_a, "busybox", "ping", "-c1", "-W2", ip_b)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        stats = {s.name: s for s in await netns.interface_stats(path_a)}
        assert stats["eth0"].tx_bytes > 0
    finally:
        await pn.close()


async def test_host_reaches_a_server_at_the_pod_ip(env: NetEnv) -> None:
    pn = env.make()
    await pn.start()
    _, path, ip = await _setup(pn, env)
    server = _Httpd(path, 8080, "hello from the pod", os.path.join(env.base, "www"))
    try:
        assert await asyncio.to_thread(_curl, f"http://{ip}:8080/") == "hello from the pod"
    finally:
        server.stop()
        await pn.close()


async def test_host_port_mapping_reaches_the_pod_through_portmap(env: NetEnv) -> None:
    pn = env.make()
    await pn.start()
    host_port = random.randint(20000, 29999)
    sid, path, _ = await _setup(pn, env, [PortMapping(host_port=host_port, container_port=8081)])
    server = _Httpd(path, 8081, "via hostPort", os.path.join(env.base, "www"))
    try:
        assert _iptables_mentions(sid), "portmap installed no rule naming the sandbox"
        # The bridge gateway is a local address of the host, so the OUTPUT DNAT applies.
        assert await asyncio.to_thread(_curl, f"http://{env.gateway}:{host_port}/") == "via hostPort"
    finally:
        server.stop()
        await pn.close()


async def test_teardown_leaves_no_namespace_veth_ip_reservation_or_iptables_rule(env: NetEnv) -> None:
    pn = env.make()
    await pn.start()
    sid, path, ip = await _setup(pn, env, [PortMapping(host_port=random.randint(20000, 29999), container_port=80)])
    veths = _host_veths_for(path)
    assert veths, "no host-side veth found"
    assert _present(os.path.join(HOST_LOCAL_DIR, env.network, ip))
    assert _iptables_mentions(sid)

    await pn.teardown(sid, path)
    # The pinned namespace stays until RemovePodSandbox; the pod's interface is no longer
    # in it by its name (the kernel may still be deleting it under the one it took).
    assert "eth0" not in await netns.interfaces(path)
    await pn.teardown(sid, path)  # StopPodSandbox may come twice
    await pn.remove_netns(path)
    await pn.remove_netns(path)
    await pn.close()

    assert not netns.exists(path)
    assert not _present(path)
    assert not any(_present(f"/sys/class/net/{v}") for v in veths)
    assert not _present(os.path.join(HOST_LOCAL_DIR, env.network, ip))
    assert _iptables_mentions(sid) == []
    assert os.listdir(env.cache_dir) == []


def _fake_plugin(env: NetEnv, name: str, body: str) -> None:
    path = os.path.join(env.bin_dir, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def _chain_with(env: NetEnv, plugin_type: str) -> None:
    doc = {
        "cniVersion": "1.0.0",
        "name": env.network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": env.bridge,
                "isGateway": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": env.subnet}]]},
            },
            {"type": plugin_type},
        ],
    }
    with open(os.path.join(env.conf_dir, "10-test.conflist"), "w") as f:
        json.dump(doc, f)


def _leftovers(env: NetEnv) -> list[str]:
    ips = (
        os.listdir(os.path.join(HOST_LOCAL_DIR, env.network))
        if os.path.isdir(os.path.join(HOST_LOCAL_DIR, env.network))
        else []
    )
    return (
        (os.listdir(env.netns_dir) if os.path.isdir(env.netns_dir) else [])
        + [n for n in ips if n[0].isdigit()]
        + (os.listdir(env.cache_dir) if os.path.isdir(env.cache_dir) else [])
    )


async def test_failing_plugin_fails_setup_with_its_message_and_leaves_nothing(env: NetEnv) -> None:
    _fake_plugin(
        env,
        "refuser",
        'cat >/dev/null\nif [ "$CNI_COMMAND" = ADD ]; then\n'
        '  echo \'{"cniVersion":"1.0.0","code":7,"msg":"refusing this pod","details":"quota used up"}\'\n'
        "  exit 1\nfi\nexit 0\n",
    )
    _chain_with(env, "refuser")
    pn = env.make(install=False, bin_dirs=[env.bin_dir, CNI_BIN])
    await pn.start()
    try:
        with pytest.raises(PluginError) as info:
            await pn.setup(PodRef(env.sandbox_id(), "p", "default", "u"))
        assert info.value.plugin == "refuser"
        assert info.value.msg == "refusing this pod"
        assert "quota used up" in str(info.value)
        assert _leftovers(env) == []
    finally:
        await pn.close()


async def test_hanging_plugin_times_out_and_leaves_nothing(env: NetEnv) -> None:
    _fake_plugin(env, "sleeper", 'cat >/dev/null\n[ "$CNI_COMMAND" = ADD ] && exec sleep 60\nexit 0\n')
    _chain_with(env, "sleeper")
    pn = env.make(install=False, timeout=1.0, bin_dirs=[env.bin_dir, CNI_BIN])
    await pn.start()
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="sleeper"):
            await pn.setup(PodRef(env.sandbox_id(), "p", "default", "u"))
        assert time.monotonic() - started < 10
        assert _leftovers(env) == []
    finally:
        await pn.close()


async def test_del_after_restart_releases_the_ip(env: NetEnv) -> None:
    first = env.make()
    await first.start()
    sid, path, ip = await _setup(first, env)
    await first.close()
    reservation = os.path.join(HOST_LOCAL_DIR, env.network, ip)
    assert _present(reservation)
    # A new daemon whose config dir no longer has the network: DEL runs from the cache.
    os.unlink(os.path.join(env.conf_dir, "10-crishim-bridge.conflist"))
    second = env.make(install=False)
    await second.start()
    try:
        assert (await second.cached_setup(sid)) is not None
        await second.teardown(sid, path)
        assert not _present(reservation)
    finally:
        await second.close()


async def test_del_frees_the_ip_when_the_namespace_is_already_gone(env: NetEnv) -> None:
    pn = env.make()
    await pn.start()
    sid, path, ip = await _setup(pn, env)
    await pn.remove_netns(path)
    try:
        await pn.teardown(sid, path)
        assert not _present(os.path.join(HOST_LOCAL_DIR, env.network, ip))
    finally:
        await pn.close()


async def test_conflist_dropped_into_watched_dir_makes_network_ready(env: NetEnv) -> None:
    pn = env.make(install=False)
    await pn.start()
    try:
        ready, reason, message = pn.status()
        assert (ready, reason) == (False, "NetworkPluginNotReady")
        assert env.conf_dir in message
        with pytest.raises(FailedPrecondition):
            await pn.setup(PodRef(env.sandbox_id(), "p", "default", "u"))
        install_default_conflist(env.conf_dir, env.subnet, network=env.network, bridge=env.bridge)
        for _ in range(50):
            if pn.status()[0]:
                break
            await asyncio.sleep(0.05)
        assert pn.status() == (True, "", "")
        assert pn.config is not None
        assert pn.config.name == env.network
    finally:
        await pn.close()


async def test_host_network_sees_the_host_interfaces() -> None:
    names = await netns.host_interfaces()
    assert set(names) == set(await asyncio.to_thread(os.listdir, "/sys/class/net"))
