"""The global options of `crishim`, accepted before the command and after it alike.

`crishim --config F serve` and `crishim serve --config F` mean the same: an
operator writes the options where the README, a unit file or habit puts them.
Every option stores what it was given in the root context's object; a value
given after the command wins over one given before it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from crishim.runtime.config import DEFAULT_CONFIG_FILE, Config, load_config
from crishim.runtime.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

# Option name -> config key ("table.key" for a key inside a TOML table).
CONFIG_KEYS = {
    "socket": "socket",
    "root": "root",
    "state_dir": "state_dir",
    "image_store": "image_store",
    "log_level": "log_level",
    "log_format": "log_format",
    "default_runtime": "default_runtime",
    "streaming_address": "streaming.address",
    "metrics_address": "metrics.address",
    "cni_conf_dir": "cni.conf_dir",
}


def _state(ctx: click.Context) -> dict[str, Any]:
    root = ctx.find_root()
    root.ensure_object(dict)
    state: dict[str, Any] = root.obj
    state.setdefault("config_file", None)
    state.setdefault("flags", {})
    return state


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is None:
        return
    state = _state(ctx)
    if param.name == "config_file":
        state["config_file"] = value
    else:
        state["flags"][param.name] = value


def _options() -> list[Callable[[F], F]]:
    def option(*decls: str, **kw: Any) -> Callable[[F], F]:
        return click.option(*decls, expose_value=False, callback=_remember, default=None, **kw)

    return [
        option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help=f"Config file (default {DEFAULT_CONFIG_FILE}); drop-ins beside it still apply.",
        ),
        option("--socket", help="Unix socket to serve CRI on."),
        option("--root", help="Persistent state directory."),
        option("--state-dir", help="Runtime state directory (tmpfs)."),
        option("--image-store", help="Image store directory (may be another disk)."),
        option("--log-level", type=click.Choice(["debug", "info", "warning", "error"])),
        option("--log-format", type=click.Choice(["text", "json"])),
        option("--default-runtime", help="Default runtime handler."),
        option("--streaming-address", help="Address of the streaming server (host:port)."),
        option("--metrics-address", help="Address of the Prometheus endpoint; empty: off."),
        option("--cni-conf-dir", help="CNI configuration directory."),
    ]


def global_options(fn: F) -> F:
    """Adds every global option to a command (or the group itself)."""
    for add in reversed(_options()):
        fn = add(fn)
    return fn


def overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """Options given on the command line, as config keys; options not given change nothing."""
    out: dict[str, Any] = {}
    for name, value in flags.items():
        table, _, sub = CONFIG_KEYS[name].rpartition(".")
        (out.setdefault(table, {}) if table else out)[sub] = value
    return out


def load(ctx: click.Context) -> Config:
    """The configuration the command line selects: the file, then the options over it."""
    state = _state(ctx)
    try:
        return load_config(
            state["config_file"], overrides(state["flags"]), require_file=state["config_file"] is not None
        )
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from exc
