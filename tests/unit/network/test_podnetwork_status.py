"""PodNetwork's view of the config dir: NetworkReady, the watcher, UpdateRuntimeConfig."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from crishim.runtime.network.defaultconf import DEFAULT_FILENAME
from crishim.runtime.network.errors import InvalidArgument
from crishim.runtime.network.manager import PodNetwork
from crishim.runtime.network.netns import pin_path


def _net(tmp_path: Path, **kw: Any) -> PodNetwork:
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    return PodNetwork(
        str(conf),
        ["/usr/lib/cni"],
        str(tmp_path / "cache"),
        str(tmp_path / "ns"),
        5,
        poll_interval=0.05,
        **kw,
    )


async def _until_ready(pn: PodNetwork, want: bool) -> None:
    for _ in range(100):
        if pn.status()[0] is want:
            return
        await asyncio.sleep(0.02)


@pytest.mark.skipif(not Path("/usr/lib/cni/bridge").exists(), reason="needs containernetworking-plugins")
async def test_watcher_follows_files_added_and_removed(tmp_path: Path) -> None:
    pn = _net(tmp_path)
    await pn.start()
    try:
        assert pn.status()[:2] == (False, "NetworkPluginNotReady")
        doc = {"cniVersion": "1.0.0", "name": "n1", "plugins": [{"type": "bridge"}]}
        (tmp_path / "conf" / "10-n1.conflist").write_text(json.dumps(doc))
        await _until_ready(pn, True)
        assert pn.status() == (True, "", "")
        (tmp_path / "conf" / "10-n1.conflist").unlink()
        await _until_ready(pn, False)
        assert pn.status()[0] is False
    finally:
        await pn.close()


async def test_not_ready_message_names_missing_plugins_and_broken_files(tmp_path: Path) -> None:
    pn = _net(tmp_path)
    (tmp_path / "conf" / "01-bad.conflist").write_text("{")
    doc = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "no-such-plugin"}]}
    (tmp_path / "conf" / "02-good.conflist").write_text(json.dumps(doc))
    await pn.reload()
    ready, reason, message = pn.status()
    assert (ready, reason) == (False, "NetworkPluginNotReady")
    assert "no-such-plugin" in message
    (tmp_path / "conf" / "02-good.conflist").unlink()
    await pn.reload()
    assert "01-bad.conflist" in pn.status()[2]


async def test_default_network_is_installed_and_follows_update_runtime_config(tmp_path: Path) -> None:
    pn = _net(tmp_path, install_default=True, pod_cidr="10.60.0.0/16")
    await pn.start()
    try:
        assert pn.config is not None
        assert pn.config.source == DEFAULT_FILENAME
        await pn.set_pod_cidr("10.61.0.0/16")
        assert pn.pod_cidr == "10.61.0.0/16"
        assert pn.config.plugins[0]["ipam"]["ranges"] == [[{"subnet": "10.61.0.0/16"}]]
        with pytest.raises(InvalidArgument):
            await pn.set_pod_cidr("nonsense")
    finally:
        await pn.close()


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b"])
def test_sandbox_ids_that_would_escape_the_netns_dir_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        pin_path(bad, "/run/x")
