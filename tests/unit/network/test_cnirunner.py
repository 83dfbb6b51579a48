"""The CNI runner against small fake plugins: what each plugin is given, in which order.

Fake plugins record their environment and stdin, so none of this needs
root; the real bridge/host-local/portmap run in tests/integration.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from crishim.runtime.network.cni import (
    Bandwidth,
    CniRunner,
    PodRef,
    PortMapping,
    RuntimeOptions,
    deletes_interface_early,
    plugins_for_pod,
)
from crishim.runtime.network.cniconf import parse_config
from crishim.runtime.network.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, PluginError

FAKE = """#!{python}
import json, os, sys, time
conf = json.load(sys.stdin)
log = os.environ["FAKE_LOG"] if "FAKE_LOG" in os.environ else {log!r}
seq = len(os.listdir(log))
cmd = os.environ["CNI_COMMAND"]
with open(os.path.join(log, f"{{seq:03d}}-{{cmd}}-{{conf['type']}}.json"), "w") as f:
    json.dump({{"env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}, "conf": conf}}, f)
mode = conf.get("mode", "")
if mode == "fail-" + cmd:
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 7, "msg": "bad thing", "details": "more"}}))
    sys.exit(1)
if mode == "gone-" + cmd:
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 3, "msg": "container not found"}}))
    sys.exit(1)
if mode == "hang-" + cmd:
    time.sleep(30)
if mode == "garbage-" + cmd:
    sys.stderr.write("panic: nil map")
    sys.exit(2)
if cmd == "ADD":
    if "prevResult" in conf:
        result = conf["prevResult"]
        result.setdefault("dns", {{}})["search"] = [conf["type"]]
    else:
        result = {{"cniVersion": conf["cniVersion"],
                   "interfaces": [{{"name": "eth0", "sandbox": os.environ["CNI_NETNS"]}}],
                   "ips": [{{"address": "fd00::9/64", "interface": 0}},
                           {{"address": "10.9.0.2/24", "interface": 0}}]}}
    print(json.dumps(result))
"""


@pytest.fixture
def plugin_env(tmp_path: Path) -> tuple[Path, Path, Path]:
    bin_dir, log_dir, cache = tmp_path / "bin", tmp_path / "log", tmp_path / "cache"
    bin_dir.mkdir()
    log_dir.mkdir()
    for name in ("alpha", "beta", "gamma"):
        p = bin_dir / name
        p.write_text(FAKE.format(python=sys.executable, log=str(log_dir)))
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return bin_dir, log_dir, cache


def _calls(log_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in sorted(os.listdir(log_dir)):
        _, cmd, ptype = name[:-5].split("-", 2)
        out.append((f"{cmd}:{ptype}", json.loads((log_dir / name).read_text())))
    return out


def _conf(*plugins: dict[str, Any], version: str = "1.0.0") -> Any:
    return parse_config(json.dumps({"cniVersion": version, "name": "fake", "plugins": list(plugins)}), "f.conflist")


POD = PodRef("sb123", name="web", namespace="prod", uid="u-1")


async def test_add_chains_prev_result_and_passes_the_cni_environment(
    plugin_env: tuple[Path, Path, Path],
) -> None:
    bin_dir, log_dir, cache = plugin_env
    runner = CniRunner([str(bin_dir)], str(cache), 10)
    setup = await runner.add(_conf({"type": "alpha"}, {"type": "beta"}), POD, "/run/x/ns", {})
    assert setup.ip == "10.9.0.2"
    assert setup.additional_ips == ("fd00::9",)
    assert setup.result["dns"] == {"search": ["beta"]}
    calls = _calls(log_dir)
    assert [c for c, _ in calls] == ["ADD:alpha", "ADD:beta"]
    env = calls[0][1]["env"]
    assert env["CNI_CONTAINERID"] == "sb123"
    assert env["CNI_NETNS"] == "/run/x/ns"
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_PATH"] == str(bin_dir)
    assert env["CNI_ARGS"] == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb123;K8S_POD_UID=u-1"
    )
    assert "prevResult" not in calls[0][1]["conf"]
    assert calls[1][1]["conf"]["prevResult"]["ips"][1]["address"] == "10.9.0.2/24"
    assert calls[0][1]["conf"]["name"] == "fake"
    assert calls[0][1]["conf"]["cniVersion"] == "1.0.0"


async def test_runtime_config_goes_only_to_plugins_declaring_the_capability(
    plugin_env: tuple[Path, Path, Path],
) -> None:
    bin_dir, log_dir, cache = plugin_env
    runner = CniRunner([str(bin_dir)], str(cache), 10)
    options = RuntimeOptions(
        port_mappings=(PortMapping(8080, 80, "TCP", "127.0.0.1"),),
        bandwidth=Bandwidth(ingress_rate=1000),
    )
    conf = _conf(
        {"type": "alpha"},
        {"type": "beta", "capabilities": {"portMappings": True, "bandwidth": False}},
        {"type": "gamma", "capabilities": {"bandwidth": True}},
    )
    await runner.add(conf, POD, "/ns", options.capability_args())
    calls = dict(_calls(log_dir))
    assert "runtimeConfig" not in calls["ADD:alpha"]["conf"]
    assert calls["ADD:beta"]["conf"]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]
    }
    assert calls["ADD:gamma"]["conf"]["runtimeConfig"] == {
        "bandwidth": {"ingressRate": 1000, "ingressBurst": 2**31 - 1}
    }


async def test_del_runs_in_reverse_with_the_cached_config_and_result(
    plugin_env: tuple[Path, Path, Path],
) -> None:
    bin_dir, log_dir, cache = plugin_env
    runner = CniRunner([str(bin_dir)], str(cache), 10)
    await runner.add(_conf({"type": "alpha"}, {"type": "beta"}), POD, "/ns", {"portMappings": []})
    # A new runner (daemon restart) and a different current config: the cache wins.
    restarted = CniRunner([str(bin_dir)], str(cache), 10)
    await restarted.delete(_conf({"type": "gamma"}), POD, "")
    dels = [(c, d) for c, d in _calls(log_dir) if c.startswith("DEL")]
    assert [c for c, _ in dels] == ["DEL:beta", "DEL:alpha"]
    assert dels[0][1]["conf"]["prevResult"]["dns"] == {"search": ["beta"]}
    assert dels[0][1]["env"]["CNI_NETNS"] == ""
    assert os.listdir(cache) == []
    assert await restarted.cached_setup(POD.sandbox_id) is None


async def test_del_without_cache_uses_the_current_config_and_is_repeatable(
    plugin_env: tuple[Path, Path, Path],
) -> None:
    bin_dir, log_dir, cache = plugin_env
    runner = CniRunner([str(bin_dir)], str(cache), 10)
    await runner.delete(_conf({"type": "alpha"}, {"type": "gamma"}), POD, "/ns")
    await runner.delete(None, POD, "/ns")
    calls = _calls(log_dir)
    assert [c for c, _ in calls] == ["DEL:gamma", "DEL:alpha"]
    assert "prevResult" not in calls[0][1]["conf"]


async def test_del_treats_not_found_as_done(plugin_env: tuple[Path, Path, Path]) -> None:
    bin_dir, log_dir, cache = plugin_env
    runner = CniRunner([str(bin_dir)], str(cache), 10)
    await runner.delete(_conf({"type": "alpha"}, {"type": "beta", "mode": "gone-DEL"}), POD, "/ns")
    assert [c for c, _ in _calls(log_dir)] == ["DEL:beta", "DEL:alpha"]


async def test_plugin_error_carries_the_plugins_code_msg_and_details(
    plugin_env: tuple[Path, Path, Path],
) -> None:
    bin_dir, _, cache = plugin_env
    runner = CniRunner([str(bin_dir)], str(cache), 10)
    with pytest.raises(PluginError) as info:
        await runner.add(_conf({"type": "alpha"}, {"type": "beta", "mode": "fail-ADD"}), POD, "/ns", {})
    err = info.value
    assert (err.plugin, err.command, err.code, err.msg, err.details) == (
        "beta",
        "ADD",
        7,
        "bad thing",
        "more",
    )
    assert "bad thing: more" in str(err)


async def test_plugin_without_json_error_reports_its_stderr(plugin_env: tuple[Path, Path, Path]) -> None:
    bin_dir, _, cache = plugin_env
    runner = CniRunner([str(bin_dir)], str(cache), 10)
    with pytest.raises(PluginError, match="panic: nil map"):
        await runner.add(_conf({"type": "alpha", "mode": "garbage-ADD"}), POD, "/ns", {})


async def test_hanging_plugin_is_killed_at_the_timeout(plugin_env: tuple[Path, Path, Path]) -> None:
    bin_dir, _, cache = plugin_env
    runner = CniRunner([str(bin_dir)], str(cache), 0.5)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="gamma"):
        await runner.add(_conf({"type": "gamma", "mode": "hang-ADD"}), POD, "/ns", {})
    assert time.monotonic() - started < 5


async def test_missing_plugin_is_a_failed_precondition_naming_the_dirs(tmp_path: Path) -> None:
    runner = CniRunner([str(tmp_path)], str(tmp_path / "cache"), 10)
    with pytest.raises(FailedPrecondition, match=str(tmp_path)):
        await runner.add(_conf({"type": "nosuch"}), POD, "/ns", {})


async def test_check_replays_the_cached_result_in_order(plugin_env: tuple[Path, Path, Path]) -> None:
    bin_dir, log_dir, cache = plugin_env
    runner = CniRunner([str(bin_dir)], str(cache), 10)
    await runner.add(_conf({"type": "alpha"}, {"type": "beta"}), POD, "/ns", {})
    await runner.check(POD, "/ns")
    checks = [(c, d) for c, d in _calls(log_dir) if c.startswith("CHECK")]
    assert [c for c, _ in checks] == ["CHECK:alpha", "CHECK:beta"]
    assert checks[0][1]["conf"]["prevResult"]["dns"] == {"search": ["beta"]}


async def test_check_is_skipped_for_pre_040_configs(plugin_env: tuple[Path, Path, Path]) -> None:
    bin_dir, log_dir, cache = plugin_env
    runner = CniRunner([str(bin_dir)], str(cache), 10)
    await runner.add(_conf({"type": "alpha"}, version="0.3.1"), POD, "/ns", {})
    await runner.check(POD, "/ns")
    assert [c for c, _ in _calls(log_dir)] == ["ADD:alpha"]


@pytest.mark.parametrize(
    "mapping",
    [PortMapping(0, 80), PortMapping(80, 70000), PortMapping(80, 80, "icmp")],
)
def test_bad_port_mapping_is_invalid_argument(mapping: PortMapping) -> None:
    with pytest.raises(InvalidArgument):
        mapping.to_cni()


HOST_LOCAL = {"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}]]}


@pytest.mark.parametrize(
    ("plugins", "early"),
    [
        ([{"type": "bridge", "ipMasq": False, "ipam": HOST_LOCAL}, {"type": "portmap"}], True),
        ([{"type": "bridge", "ipam": HOST_LOCAL}], True),
        # The bridge plugin finds its masquerade rules from the link's addresses.
        ([{"type": "bridge", "ipMasq": True, "ipam": HOST_LOCAL}, {"type": "portmap"}], False),
        # dhcp releases its lease through the link.
        ([{"type": "bridge", "ipam": {"type": "dhcp"}}], False),
        ([{"type": "bridge", "ipam": HOST_LOCAL}, {"type": "tuning"}], False),
        ([{"type": "ptp", "ipam": HOST_LOCAL}], False),
    ],
)
def test_only_networks_whose_del_needs_no_link_lose_it_first(plugins: list[dict[str, Any]], early: bool) -> None:
    assert deletes_interface_early(_conf(*plugins)) is early


def test_idle_portmap_is_left_out_only_where_asked_and_only_without_port_mappings() -> None:
    netconf = parse_config(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "crishim",
                "plugins": [
                    {"type": "bridge", "ipam": {"type": "host-local"}},
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            }
        ),
        "10-crishim-bridge.conflist",
    )
    mapped = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}

    def types(runtime_config: dict[str, Any], skip: bool) -> list[tuple[int, str]]:
        return [(i, p["type"]) for i, p in plugins_for_pod(netconf, runtime_config, skip_idle_portmap=skip)]

    assert types({}, True) == [(0, "bridge")]  # the built-in network, a pod mapping no port
    assert types({"dns": {"servers": ["10.0.0.10"]}}, True) == [(0, "bridge")]
    assert types(mapped, True) == [(0, "bridge"), (1, "portmap")]  # hostPort pods keep it
    assert types({}, False) == [(0, "bridge"), (1, "portmap")]  # a network the node's admin wrote
