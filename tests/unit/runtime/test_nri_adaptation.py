"""The NRI adaptation over a real socket: registration, Synchronize, events, and plugins that misbehave."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from crishim.runtime.config import NriConfig
from crishim.runtime.nri import nri_pb2
from crishim.runtime.nri.adaptation import Nri
from crishim.runtime.nri.gate import CreationGate
from crishim.runtime.nri.multiplex import FRAME_HEADER
from crishim.runtime.nri.plugin import PluginError, PluginGone, sync_chunks

from tests.support.nri_plugin import NriTestPlugin

POD = nri_pb2.PodSandbox(id="pod1", name="web", namespace="ns", uid="u1")
CONTAINER = nri_pb2.Container(id="ctr1", pod_sandbox_id="pod1", name="app")


@pytest.fixture
async def nri(tmp_path: Path) -> AsyncIterator[Nri]:
    config = NriConfig(
        socket_path=str(tmp_path / "nri" / "nri.sock"),
        plugin_path=str(tmp_path / "plugins"),
        plugin_config_path=str(tmp_path / "conf.d"),
        plugin_registration_timeout=1.0,
        plugin_request_timeout=0.5,
    )
    adaptation = Nri(config, "1.0")
    await adaptation.start(lambda: ([POD], [CONTAINER]))
    yield adaptation
    await adaptation.close()


async def connected(nri: Nri, name: str, index: str = "00") -> NriTestPlugin:
    plugin = NriTestPlugin(Path(nri.config.socket_path), name, index)
    await asyncio.to_thread(plugin.start)
    await until(lambda: f"{index}-{name}" in nri.info()["plugins"])
    return plugin


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_a_plugin_is_configured_synchronised_and_told_of_events(nri: Nri) -> None:
    plugin = await connected(nri, "watcher", "10")
    try:
        assert plugin.configure_request is not None
        assert plugin.configure_request.runtime_name == "crishim"
        assert plugin.configure_request.request_timeout == 500
        assert (plugin.synced_pods, plugin.synced_containers) == (["pod1"], ["ctr1"])
        await until(lambda: nri.info()["plugins"] == ["10-watcher"])  # admitted once Synchronize returned
        await nri.run_pod_sandbox(POD)
        await nri.container_event(nri_pb2.START_CONTAINER, POD, CONTAINER)
        assert [(e.kind, e.pod_name, e.container_name) for e in plugin.recorded()] == [
            ("RunPodSandbox", "web", ""),
            ("StartContainer", "web", "app"),
        ]
    finally:
        await asyncio.to_thread(plugin.stop)


async def test_a_refusal_fails_the_event_and_keeps_the_plugin(nri: Nri) -> None:
    plugin = await connected(nri, "picky")
    plugin.hooks["RunPodSandbox"] = lambda pod: (_ for _ in ()).throw(RuntimeError("no pods today"))
    try:
        with pytest.raises(PluginError, match="00-picky refused RunPodSandbox: no pods today"):
            await nri.run_pod_sandbox(POD)
        assert nri.info()["plugins"] == ["00-picky"]
    finally:
        await asyncio.to_thread(plugin.stop)


async def test_a_plugin_that_times_out_fails_the_hook_once_and_is_dropped(nri: Nri) -> None:
    plugin = await connected(nri, "slow")
    plugin.hooks["RunPodSandbox"] = lambda pod: time.sleep(1.0)
    try:
        started = time.monotonic()
        with pytest.raises(PluginGone, match="NRI plugin 00-slow: RunPodSandbox got no answer within 0.5s"):
            await nri.run_pod_sandbox(POD)
        assert time.monotonic() - started < 1.0
        assert nri.info()["plugins"] == []
        await nri.run_pod_sandbox(POD)  # the retry goes on without it
    finally:
        await asyncio.to_thread(plugin.stop)


async def test_a_plugin_that_times_out_on_an_event_is_dropped_and_the_event_goes_on(nri: Nri) -> None:
    plugin = await connected(nri, "slow")
    plugin.hooks["StopContainer"] = lambda pod, container: time.sleep(1.0)
    try:
        await nri.container_event(nri_pb2.STOP_CONTAINER, POD, CONTAINER)
        assert nri.info()["plugins"] == []
    finally:
        await asyncio.to_thread(plugin.stop)


async def test_a_plugin_that_hangs_up_is_dropped(nri: Nri) -> None:
    plugin = await connected(nri, "crashy")
    await asyncio.to_thread(plugin.stop)
    await until(lambda: nri.info()["plugins"] == [])
    await nri.run_pod_sandbox(POD)


async def test_garbage_and_silence_are_dropped_and_others_still_connect(nri: Nri) -> None:
    _, garbage = await asyncio.open_unix_connection(nri.config.socket_path)
    garbage.write(FRAME_HEADER.pack(2, 12) + b"not ttrpc!!!")
    _, silent = await asyncio.open_unix_connection(nri.config.socket_path)
    await garbage.drain()
    plugin = await connected(nri, "good")
    try:
        await until(lambda: not nri._connecting, within=3.0)  # the silent one timed out registering
        assert nri.info()["plugins"] == ["00-good"]
    finally:
        garbage.close()
        silent.close()
        await asyncio.to_thread(plugin.stop)


async def test_the_gate_keeps_creations_and_synchronisation_apart() -> None:
    gate, order = CreationGate(), []

    async def create(name: str, hold: float) -> None:
        async with gate.creating():
            order.append(f"{name} in")
            await asyncio.sleep(hold)
            order.append(f"{name} out")

    async def synchronize() -> None:
        async with gate.synchronizing():
            order.append("sync in")
            await asyncio.sleep(0.05)
            order.append("sync out")

    first = asyncio.create_task(create("a", 0.05))
    await asyncio.sleep(0.01)
    sync = asyncio.create_task(synchronize())
    await asyncio.sleep(0.01)
    late = asyncio.create_task(create("b", 0))
    await asyncio.gather(first, sync, late)
    assert order == ["a in", "a out", "sync in", "sync out", "b in", "b out"]


def test_synchronize_is_split_below_the_message_limit() -> None:
    big = [nri_pb2.Container(id=f"c{i}", env=["X=" + "y" * 100_000]) for i in range(100)]
    chunks = sync_chunks([POD], big)
    assert len(chunks) > 2
    assert [c.id for _, containers in chunks for c in containers] == [c.id for c in big]
    assert chunks[0][0] == [POD]
    assert all(sum(c.ByteSize() for c in containers) < 4 << 20 for _, containers in chunks)
