"""A standard set of test images, built by crishim.images.build and pushed to the test registry.

Use with the registry fixtures: `pytest_plugins = ["tests.support.registry", "tests.support.images"]`,
then ask for `test_images`. Every reference is "127.0.0.1:PORT/crishim-test/NAME:TAG".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from crishim.images import build as b

from tests.support import testimages as tb
from tests.support.push import Credentials, Pusher
from tests.support.registry import RegistryServer

REPO_PREFIX = "crishim-test"


@dataclass(frozen=True, slots=True)
class TestImages:
    """Pushed references by short name, with what tests need to check them."""

    __test__ = False  # not a pytest test class despite its name

    registry: RegistryServer
    refs: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    built: dict[str, b.Built] = field(default_factory=dict)

    def ref(self, name: str) -> str:
        return self.refs[name]

    def image(self, name: str) -> b.BuiltImage:
        """The built single-platform image `name` (an index has no config digest of its own)."""
        built = self.built[name]
        assert isinstance(built, b.BuiltImage), f"{name} is an index, not an image"
        return built


def standard_images() -> dict[str, b.Built]:
    """Short name ("busybox:latest") -> image. Layers are shared where the images share them."""
    base = b.build_layer(tb.busybox_rootfs_layer())
    shell = b.ImageConfig(cmd=("sh",))
    data = b.build_layer(
        [
            b.directory("data"),
            b.regular("data/keep", b"keep\n"),
            b.regular("data/remove-me", b"gone\n"),
            b.directory("data/opaque"),
            b.regular("data/opaque/old", b"old\n"),
            b.symlink("data/link", "keep"),
        ]
    )
    changes = b.build_layer(
        [
            b.whiteout("data/remove-me"),
            b.directory("data/opaque"),
            b.opaque("data/opaque"),
            b.regular("data/opaque/new", b"new\n"),
            b.hardlink("data/keep-hardlink", "data/keep"),
            b.regular("data/owned", b"owned\n", mode=0o640, uid=1001, gid=1234),
        ]
    )
    busybox = b.build_image([base], shell)
    images: dict[str, b.Built] = {
        "busybox:latest": busybox,
        "layers:latest": b.build_image(
            [base, data, changes],
            b.ImageConfig(
                cmd=("sh",),
                working_dir="/data",
                env=("PATH=/bin", "LAYERS=3"),
                labels={"io.crishim.test": "layers"},
                stop_signal="SIGINT",
                exposed_ports=("8080",),
                volumes=("/data/vol",),
            ),
        ),
        "user-uid:latest": b.build_image([base], b.ImageConfig(cmd=("sh",), user="1001")),
        "user-name:latest": b.build_image([base], b.ImageConfig(cmd=("sh",), user="www-data")),
        "user-uid-group:latest": b.build_image([base], b.ImageConfig(cmd=("sh",), user="1001:1234")),
        "user-name-group:latest": b.build_image([base], b.ImageConfig(cmd=("sh",), user="test-user:test-group")),
        "artifact:latest": tb.build_artifact(
            [[b.directory("content"), b.regular("content/hello.txt", b"hello from an image volume\n")]]
        ),
        "busybox-docker:latest": b.build_image(
            [b.build_layer(tb.busybox_rootfs_layer(), docker=True)], shell, docker=True
        ),
        "busybox-zstd:latest": b.build_image([tb.busybox_rootfs_layer()], shell, compression="zstd"),
    }
    arm64 = b.build_image(
        [b.build_layer([b.regular("etc/arch", b"arm64\n")])],
        shell,
        platform=b.Platform("linux", "arm64", "v8"),
    )
    images["multiarch:latest"] = b.build_index([busybox, arm64])
    return images


def push_standard_images(registry: RegistryServer) -> TestImages:
    images = standard_images()
    result = TestImages(registry)
    creds = Credentials(registry.username, registry.password) if registry.username else None
    with Pusher(registry.host, credentials=creds) as pusher:
        for name, built in images.items():
            repo, _, tag = name.partition(":")
            digest = pusher.push(f"{REPO_PREFIX}/{repo}", built, [tag])
            result.refs[name] = f"{registry.host}/{REPO_PREFIX}/{repo}:{tag}"
            result.digests[name] = digest
            result.built[name] = built
    return result


@pytest.fixture(scope="session")
def test_images(registry: RegistryServer) -> TestImages:
    """The standard images, pushed once per session into the `registry` fixture's registry."""
    return push_standard_images(registry)
