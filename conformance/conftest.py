"""The conformance suite's live daemon: crishim with critest's images behind registry mirrors.

critest names its images on gcr.io, registry.k8s.io and k8s.gcr.io. Users run
critest against runtimes whose registries are mirrored, so this suite does the
same: every test image is pushed into a local docker-registry, and crishim's
certs.d configuration mirrors those hosts to it. Tests then use critest's own
image names unchanged.
"""

from __future__ import annotations

import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, running_daemon
from tests.support.registry import RegistryServer

REPO = Path(__file__).resolve().parent.parent
MIRRORED_HOSTS = ("gcr.io", "registry.k8s.io", "k8s.gcr.io")


def write_mirrors(certs_dir: Path, registry_host: str) -> None:
    for host in MIRRORED_HOSTS:
        hosts_toml = certs_dir / host / "hosts.toml"
        hosts_toml.parent.mkdir(parents=True, exist_ok=True)
        hosts_toml.write_text(
            f'server = "https://{host}"\n\n[host."http://{registry_host}"]\n  capabilities = ["pull", "resolve"]\n'
        )


@pytest.fixture(scope="session")
def critest_images(registry: RegistryServer) -> dict[str, str]:
    """{upstream reference: pushed reference} of every image critest uses."""
    push = runpy.run_path(str(REPO / "scripts" / "build-test-images"))["push_critest_images"]
    pushed: dict[str, str] = push(registry.host)
    return pushed


@pytest.fixture(scope="session")
def daemon(registry: RegistryServer, critest_images: dict[str, str]) -> Iterator[Daemon]:
    with running_daemon(start=False) as d:
        write_mirrors(d.dir / "certs.d", registry.host)
        d.start()
        yield d
