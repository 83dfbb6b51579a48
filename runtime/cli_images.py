"""`crishim pull` and `crishim images`: the image store from the command line.

They open the image store the daemon uses and run the same code the PullImage
RPC runs, so what an operator sees is what the kubelet would get.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
from crishim.runtime.cli_options import global_options, load
from crishim.runtime.config import Config


def _store(config: Config):  # type: ignore[no-untyped-def]
    from crishim.images.policy import PolicySet
    from crishim.images.store import ImageStore

    return ImageStore(
        config.image_store_path,
        Path(config.registries.config_path) if config.registries.config_path else None,
        max_parallel_layers=config.download_limit,
        pull_progress_timeout=config.image_pull_progress_timeout,
        policies=PolicySet.from_settings(config.image_policy, config.image_policy_dir),
        priority_namespaces=config.images.priority_namespaces,
    )


def _run_with_store(config: Config, work, failure: str) -> None:  # type: ignore[no-untyped-def]
    """Runs `work(store)` on the configured image store, closing it, turning errors into click's."""

    async def run() -> None:
        store = _store(config)
        try:
            await work(store)
        finally:
            await store.aclose()

    import asyncio  # here: `crishim serve` imports asyncio its own way (runtime/lazyssl.py)

    try:
        asyncio.run(run())
    except Exception as exc:
        raise click.ClickException(f"{failure}: {exc}") from exc


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class LayerProgress:
    """One line per layer: bytes, rate and ETA, redrawn as progress reports arrive."""

    def __init__(self) -> None:
        self.layers: dict[str, tuple[int, int, bool, bool]] = {}
        self.started = time.monotonic()
        self._lines = 0

    def update(self, progress) -> None:  # type: ignore[no-untyped-def]
        self.layers[progress.layer] = (progress.downloaded, progress.total, progress.done, progress.cached)
        self.draw()

    def draw(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        if self._lines:
            click.echo(f"\x1b[{self._lines}A", nl=False)
        for digest, (done_bytes, total, done, cached) in self.layers.items():
            rate = done_bytes / elapsed
            if cached:
                state = "already present"
            elif done:
                state = f"done {_human(done_bytes)}"
            else:
                eta = f"{(total - done_bytes) / rate:.0f}s" if total > 0 and rate > 0 else "?"
                of = f"/{_human(total)}" if total > 0 else ""
                state = f"{_human(done_bytes)}{of} {_human(rate)}/s eta {eta}"
            click.echo(f"\x1b[2K{digest[7:19]}: {state}")
        self._lines = len(self.layers)


@click.command()
@global_options
@click.argument("image")
@click.option("--username", default=None, help="Registry user name.")
@click.option("--password", default=None, help="Registry password.")
@click.option("--namespace", default="", help="Check IMAGE against this pod namespace's image policy.")
@click.pass_context
def pull(ctx: click.Context, image: str, username: str | None, password: str | None, namespace: str) -> None:
    """Pull IMAGE into crishim's image store, showing the policy check and each layer's progress."""
    from crishim.images.manifest import Credentials

    config = load(ctx)
    creds = Credentials(username=username or "", password=password or "") if username else None
    bar = LayerProgress()

    async def work(store) -> None:  # type: ignore[no-untyped-def]
        started = time.monotonic()
        record = await store.pull(
            image, creds, bar.update, namespace=namespace, on_verdict=lambda v: click.echo(f"policy: {v}")
        )
        seconds = time.monotonic() - started
        click.echo(f"pulled {image} as {record.id} ({_human(record.size)} in {seconds:.1f}s)")

    _run_with_store(config, work, f"pull {image} failed")


@click.group(invoke_without_command=True)
@global_options
@click.pass_context
def images(ctx: click.Context) -> None:
    """List the images in the store (subcommands: import, prefetch, checkpoint-image)."""
    if ctx.invoked_subcommand is not None:
        return
    config = load(ctx)

    async def run() -> None:
        store = _store(config)
        try:
            click.echo(f"{'IMAGE':60} {'ID':15} {'SIZE':>10} PINNED")
            for record in store.list():
                names = list(record.repo_tags) or [d.split("@")[0] + "@<none>" for d in record.repo_digests]
                for name in names or ["<none>"]:
                    click.echo(
                        f"{name:60} {record.id[7:19]:15} {_human(record.size):>10} {'yes' if record.pinned else ''}"
                    )
        finally:
            await store.aclose()

    import asyncio

    asyncio.run(run())


@images.command("import")
@global_options
@click.argument("archive", type=click.Path(exists=True, path_type=Path))
@click.pass_context
def import_images(ctx: click.Context, archive: Path) -> None:
    """Load an OCI image layout (dir or tar) or a `docker save` tar, for offline nodes."""
    config = load(ctx)

    async def work(store) -> None:  # type: ignore[no-untyped-def]
        for record in await store.import_archive(archive):
            click.echo(f"imported {', '.join(record.repo_tags) or record.id}")

    _run_with_store(config, work, f"import of {archive} failed")


@images.command("checkpoint-image")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("ref")
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path),
    help="The OCI image layout directory to write (new, or empty).",
)  # fmt: skip
def checkpoint_image(archive: Path, ref: str, output: Path) -> None:
    """Pack checkpoint ARCHIVE as image REF, an OCI image layout, as Podman and CRI-O pack one.

    One layer holds the archive; the manifest's checkpoint annotations (CRI-O's and containerd's)
    name the container. Load it with `crishim images import DIR`, or push it with any registry
    client (`skopeo copy oci:DIR docker://REF`); CreateContainer naming it restores the container.
    """
    from crishim.images.checkpoint_image import build_checkpoint_image
    from crishim.images.errors import ImageError

    try:
        built = build_checkpoint_image(archive, ref, output)
    except ImageError as exc:
        raise click.ClickException(f"checkpoint image of {archive} failed: {exc}") from exc
    click.echo(f"wrote {built.name} ({built.manifest_digest}, image {built.image_id}) to {output}")


@images.command("prefetch")
@global_options
@click.argument("listing", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Unlist (and unpin) references loaded by hand before that FILE lacks.")
@click.pass_context
def prefetch_images(ctx: click.Context, listing: Path, replace: bool) -> None:
    """Pull and pin the images FILE lists (one reference a line, # comments), and keep them:
    the daemon re-pulls them when their tag moves and its restarts keep them pinned."""
    from crishim.images.errors import InvalidArgument
    from crishim.images.pause import PAUSE_IMAGE
    from crishim.images.prefetch import MANUAL_SOURCE, Prefetcher, read_list

    config = load(ctx)
    try:
        refs = read_list(listing.read_text())
    except InvalidArgument as exc:
        raise click.ClickException(f"{listing}: {exc}") from exc

    async def work(store) -> None:  # type: ignore[no-untyped-def]
        prefetcher = Prefetcher(store, config.images.refresh_interval, [config.sandbox_image or PAUSE_IMAGE])
        prefetcher.adopt(MANUAL_SOURCE, refs, replace=replace)
        failed = 0
        for ref in refs:
            click.echo(f"prefetch {ref}")
            try:
                record = await prefetcher.ensure(ref, refresh=True, progress=LayerProgress().update)
            except Exception as exc:  # noqa: BLE001 - report each, then fail the command
                click.echo(f"  failed: {exc}", err=True)
                failed += 1
                continue
            click.echo(f"  pinned {record.id} ({_human(record.size)})")
        if failed:
            raise RuntimeError(f"{failed} of {len(refs)} references failed; they stay listed and are retried")

    _run_with_store(config, work, f"prefetch of {listing} failed")
