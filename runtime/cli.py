"""The `crishim` command: serve, config, version, doctor, pull, images."""

from __future__ import annotations

import json
import sys

import click
from crishim.runtime.cli_options import global_options, load
from crishim.runtime.config import dump_config
from crishim.runtime.version import RUNTIME_API_VERSION, RUNTIME_NAME, __version__


@click.group()
@global_options
@click.pass_context
def main(ctx: click.Context) -> None:
    """crishim: a Kubernetes CRI v1 runtime on runc/crun and conmon.

    The options below are accepted after the command too: `crishim serve --config FILE`.
    """
    ctx.ensure_object(dict)


@main.command()
@global_options
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Serve CRI v1 on the configured unix socket until SIGTERM."""
    from crishim.runtime.lazyssl import import_asyncio_without_ssl

    import_asyncio_without_ssl()  # first, before grpc imports asyncio: see lazyssl.py
    import asyncio

    from crishim.runtime.errors import FailedPrecondition
    from crishim.runtime.logs import setup_logging
    from crishim.runtime.server import serve as run_server

    config = load(ctx)
    setup_logging(config.log_level, config.log_format)
    try:
        asyncio.run(run_server(config))
    except FailedPrecondition as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("config")
@global_options
@click.pass_context
def show_config(ctx: click.Context) -> None:
    """Print the effective configuration as TOML."""
    click.echo(dump_config(load(ctx)), nl=False)


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
@global_options
@click.option("--fix", is_flag=True, help="Fix what can be fixed (mount v2 controllers as v1 for crun).")
@click.pass_context
def doctor(ctx: click.Context, fix: bool) -> None:
    """Check the node: runtimes, conmon, CNI plugins, overlayfs, cgroups, idmap, PSI."""
    from crishim.runtime.doctor import run_checks

    config = load(ctx)
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
