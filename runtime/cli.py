"""The `crishim` command: serve, config, version, doctor, pull, images."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click
from crishim.runtime.config import DEFAULT_CONFIG_FILE, Config, dump_config, load_config
from crishim.runtime.errors import ConfigError
from crishim.runtime.version import RUNTIME_API_VERSION, RUNTIME_NAME, __version__


def _overrides(**flags: Any) -> dict[str, Any]:
    """Flags given on the command line, as config keys; unset flags change nothing."""
    out: dict[str, Any] = {}
    for key, value in flags.items():
        if value is None:
            continue
        if "." in key:
            table, sub = key.split(".", 1)
            out.setdefault(table, {})[sub] = value
        else:
            out[key] = value
    return out


def _load(ctx: click.Context) -> Config:
    try:
        return load_config(ctx.obj["config_file"], ctx.obj.get("overrides"), require_file=ctx.obj["explicit"])
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from exc


@click.group()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Config file (default {DEFAULT_CONFIG_FILE}); drop-ins beside it still apply.",
)
@click.option("--socket", default=None, help="Unix socket to serve CRI on.")
@click.option("--root", default=None, help="Persistent state directory.")
@click.option("--state-dir", default=None, help="Runtime state directory (tmpfs).")
@click.option("--image-store", default=None, help="Image store directory (may be another disk).")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default=None, type=click.Choice(["text", "json"]))
@click.option("--default-runtime", default=None, help="Default runtime handler.")
@click.option("--streaming-address", default=None, help="Address of the streaming server (host:port).")
@click.option("--metrics-address", default=None, help="Address of the Prometheus endpoint; empty: off.")
@click.option("--cni-conf-dir", default=None, help="CNI configuration directory.")
@click.pass_context
def main(
    ctx: click.Context,
    config_file: Path | None,
    socket: str | None,
    root: str | None,
    state_dir: str | None,
    image_store: str | None,
    log_level: str | None,
    log_format: str | None,
    default_runtime: str | None,
    streaming_address: str | None,
    metrics_address: str | None,
    cni_conf_dir: str | None,
) -> None:
    """crishim: a Kubernetes CRI v1 runtime on runc/crun and conmon."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file
    ctx.obj["explicit"] = config_file is not None
    ctx.obj["overrides"] = _overrides(
        socket=socket,
        root=root,
        state_dir=state_dir,
        image_store=image_store,
        log_level=log_level,
        log_format=log_format,
        default_runtime=default_runtime,
        **{"streaming.address": streaming_address, "metrics.address": metrics_address, "cni.conf_dir": cni_conf_dir},
    )


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Serve CRI v1 on the configured unix socket until SIGTERM."""
    from crishim.runtime.errors import FailedPrecondition
    from crishim.runtime.logs import setup_logging
    from crishim.runtime.server import serve as run_server

    config = _load(ctx)
    setup_logging(config.log_level, config.log_format)
    try:
        asyncio.run(run_server(config))
    except FailedPrecondition as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("config")
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective configuration as TOML."""
    click.echo(dump_config(_load(ctx)), nl=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def version(as_json: bool) -> None:
    """Print crishim's version and the CRI version it speaks."""
    info = {"runtime_name": RUNTIME_NAME, "runtime_version": __version__, "runtime_api_version": RUNTIME_API_VERSION}
    if as_json:
        click.echo(json.dumps(info))
    else:
        for key, value in info.items():
            click.echo(f"{key}: {value}")


@main.command()
@click.option("--fix", is_flag=True, help="Fix what can be fixed (mount v2 controllers as v1 for crun).")
@click.pass_context
def doctor(ctx: click.Context, fix: bool) -> None:
    """Check the node: runtimes, conmon, CNI plugins, overlayfs, cgroups, idmap, PSI."""
    from crishim.runtime.doctor import run_checks

    config = _load(ctx)
    results = run_checks(config, fix=fix)
    failed = 0
    for check in results:
        mark = "ok  " if check.ok else ("warn" if check.warning else "FAIL")
        click.echo(f"[{mark}] {check.name}: {check.detail}")
        if not check.ok and not check.warning:
            failed += 1
    if failed:
        click.echo(f"{failed} check(s) failed")
        sys.exit(1)


def _register_optional_commands() -> None:
    """Image commands live beside the image code; they join the group here."""
    from crishim.runtime.cli_images import images, pull

    main.add_command(pull)
    main.add_command(images)


_register_optional_commands()


if __name__ == "__main__":
    main()
