"""CNI network configuration: parse one file, pick the first valid one in a directory.

The CNI spec's rules as runtimes apply them: files ending in .conflist,
.conf or .json, read in name order; a .conflist (or a .json holding a
`plugins` list) is a network configuration list, a .conf (or other .json) a
single plugin configuration that we wrap into a one-plugin list. The first
file that parses and validates wins; invalid files are skipped with a logged
reason, so one broken file does not take the node's network down.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from crishim.runtime.network.errors import InvalidArgument

log = logging.getLogger("crishim.network")

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
# Versions whose configs we can pass on and whose results we can read.
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        raise InvalidArgument(f"CNI version {version!r} is not of the form X.Y.Z") from None


@dataclass(frozen=True, slots=True)
class NetworkConfigList:
    """One CNI network: its name, version and ordered plugin configurations.

    `raw` is the configuration as a JSON-ready dict; the result cache keeps it
    so DEL after a restart runs exactly what ADD ran, even if the file changed.
    """

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def plugin_types(self) -> tuple[str, ...]:
        return tuple(str(p["type"]) for p in self.plugins)


def _pick_version(doc: dict[str, Any]) -> str:
    # CNI 1.1: `cniVersions` lists every version the file is valid for; use the
    # highest one we speak, falling back to `cniVersion`.
    versions = doc.get("cniVersions")
    if versions is not None:
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise InvalidArgument("cniVersions must be a list of version strings")
        usable = [v for v in versions if v in SUPPORTED_VERSIONS]
        if usable:
            return str(max(usable, key=version_tuple))
    version = doc.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise InvalidArgument("cniVersion is missing")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(SUPPORTED_VERSIONS)
        raise InvalidArgument(f"cniVersion {version} is not supported (supported: {supported})")
    return version


def _check_plugin(plugin: Any, index: int) -> dict[str, Any]:
    if not isinstance(plugin, dict):
        raise InvalidArgument(f"plugin #{index} is not a JSON object")
    ptype = plugin.get("type")
    if not isinstance(ptype, str) or not ptype:
        raise InvalidArgument(f"plugin #{index} has no type")
    if "/" in ptype or ptype in (".", ".."):
        raise InvalidArgument(f"plugin type {ptype!r} must be a bare executable name")
    return plugin


def parse_config(data: bytes | str, filename: str = "") -> NetworkConfigList:
    """Parse and validate one configuration file's content; InvalidArgument says what is wrong."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("the top level is not a JSON object")
    is_list = filename.endswith(".conflist") or (not filename.endswith(".conf") and "plugins" in doc)
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("the network has no name")
    if "/" in name or name in (".", ".."):
        raise InvalidArgument(f"network name {name!r} cannot contain '/'")
    version = _pick_version(doc)
    if is_list:
        plugins = doc.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise InvalidArgument("plugins must be a non-empty list")
        checked = tuple(_check_plugin(p, i) for i, p in enumerate(plugins))
        raw = dict(doc)
    else:
        checked = (_check_plugin(doc, 0),)
        raw = {"cniVersion": version, "name": name, "plugins": [doc]}
    disable_check = doc.get("disableCheck", False)
    if isinstance(disable_check, str):
        disable_check = disable_check.lower() == "true"
    return NetworkConfigList(
        name=name,
        cni_version=version,
        plugins=checked,
        disable_check=bool(disable_check),
        source=filename,
        raw=raw,
    )


def config_from_raw(raw: dict[str, Any]) -> NetworkConfigList:
    """Rebuild a list from the dict kept in the result cache."""
    return parse_config(json.dumps(raw), "cached.conflist")


def candidate_files(conf_dir: str) -> list[str]:
    """Configuration file names in `conf_dir`, in the order CNI tries them."""
    try:
        names = os.listdir(conf_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(CONFIG_SUFFIXES))


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    """The chosen network (or None) and why each skipped file was skipped."""

    config: NetworkConfigList | None
    skipped: tuple[str, ...]


def load_conf_dir(conf_dir: str) -> LoadOutcome:
    """Blocking: the first valid network configuration in `conf_dir`, in name order."""
    skipped: list[str] = []
    for name in candidate_files(conf_dir):
        path = os.path.join(conf_dir, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
            config = parse_config(data, name)
        except (OSError, InvalidArgument) as exc:
            reason = f"{path}: {exc}"
            log.warning("skipping CNI config %s", reason)
            skipped.append(reason)
            continue
        return LoadOutcome(config=config, skipped=tuple(skipped))
    return LoadOutcome(config=None, skipped=tuple(skipped))
