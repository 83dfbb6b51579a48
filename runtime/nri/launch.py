"""Pre-installed NRI plugins: executables named NN-name in plugin_path, started with the daemon.

Each inherits one end of a socket pair, its number in NRI_PLUGIN_SOCKET,
with its name and index in NRI_PLUGIN_NAME and NRI_PLUGIN_IDX, as NRI launches
them; its configuration is plugin_config_path/NN-name.conf, else name.conf.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from pathlib import Path

from crishim.runtime.config import NriConfig
from crishim.runtime.nri.plugin import Plugin, UpdateHandler

log = logging.getLogger("crishim.nri")

PLUGIN_FILE = re.compile(r"(?P<index>[0-9]{2})-(?P<name>[A-Za-z0-9_.+-]+)")


def preinstalled(plugin_path: Path) -> list[tuple[str, str, Path]]:
    """(index, name, path) of each executable NN-name file, in name order."""
    try:
        entries = sorted(plugin_path.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        match = PLUGIN_FILE.fullmatch(entry.name)
        if match and entry.is_file() and os.access(entry, os.X_OK):
            found.append((match["index"], match["name"], entry))
    return found


def plugin_config(config_dir: Path, index: str, name: str) -> str:
    for candidate in (config_dir / f"{index}-{name}.conf", config_dir / f"{name}.conf"):
        try:
            return candidate.read_text()
        except FileNotFoundError:
            continue
    return ""


async def launch_preinstalled(config: NriConfig, on_update: UpdateHandler | None) -> list[Plugin]:
    """Starts each pre-installed plugin on its own socket pair; a plugin that cannot start is logged."""
    plugins = []
    for index, name, path in preinstalled(Path(config.plugin_path)):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                str(path),
                env={"NRI_PLUGIN_NAME": name, "NRI_PLUGIN_IDX": index, "NRI_PLUGIN_SOCKET": str(theirs.fileno())},
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            log.error("NRI: cannot start plugin %s: %s", path, exc)
            ours.close()
            continue
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        cfg = plugin_config(Path(config.plugin_config_path), index, name)
        plugin = Plugin(reader, writer, config, name=name, index=index, plugin_config=cfg, on_update=on_update)
        plugin.process = process
        plugins.append(plugin)
        log.info("NRI: started plugin %s-%s (%s)", index, name, path)
    return plugins
