"""A checkpoint packed as an OCI image: built, imported, pushed, pulled, and recognised by CreateContainer.

Every test here runs on any node: the restore itself, which needs CRIU, is in
test_checkpoint_image_restore.py. Here an image built from a synthetic archive
(the checkpoint layout without CRIU's images) is imported with `crishim images
import` and pulled from the test registry, listed with its checkpoint
annotation, and CreateContainer naming it reads the archive from its layer: its
refusals name the image, and a bad archive in a checkpoint image is
INVALID_ARGUMENT with nothing left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.images import build as b
from crishim.images.checkpoint_image import CRIO_NAME_ANNOTATION, NAME_ANNOTATIONS, build_checkpoint_image

from tests.integration.test_checkpoint import _nothing_left, _restore_config, _synthetic_archive
from tests.support.cri import (
    create_container,
    image_status,
    list_images,
    pull,
    refusal,
    remove_image,
    remove_pod,
    run_pod,
)
from tests.support.daemon import Daemon
from tests.support.push import Pusher, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.root

ABSENT_BASE = "127.0.0.1:1/never-pulled:v1"


def crishim(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = [sys.executable, "-m", "crishim.runtime.cli"] + (["--config", str(config)] if config else [])
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def pod(live_daemon: Daemon) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    sid, config = run_pod(live_daemon, "ckpt-image", handler="runc")
    yield sid, config
    remove_pod(live_daemon, sid)


def _listed(daemon: Daemon, ref: str) -> pb.Image:
    found = [image for image in list_images(daemon) if ref in image.repo_tags]
    assert len(found) == 1, [list(i.repo_tags) for i in list_images(daemon)]
    return found[0]


def _push_checkpoint_image(registry: RegistryServer, archive: Path, layout: Path, repository: str) -> str:
    build_checkpoint_image(archive, f"{registry.host}/{repository}:v1", layout)
    push_layout(layout, registry.host, repository, tags=["v1"])
    return f"{registry.host}/{repository}:v1"


def test_a_built_checkpoint_image_is_imported_and_listed_with_its_annotation(
    live_daemon: Daemon, busybox: str, tmp_path: Path
) -> None:
    archive = _synthetic_archive(tmp_path / "c.tar", busybox)
    ref = "example.com/checkpoints/app:imported"
    built = crishim("images", "checkpoint-image", str(archive), ref, "-o", str(tmp_path / "layout"))
    assert built.returncode == 0, built.stderr
    assert f"wrote {ref}" in built.stdout
    imported = crishim("images", "import", str(tmp_path / "layout"), config=live_daemon.config_file)
    assert imported.returncode == 0, imported.stderr
    assert f"imported {ref}" in imported.stdout

    image = _listed(live_daemon, ref)  # the daemon lists what the command imported into its store
    assert {key: image.spec.annotations[key] for key in NAME_ANNOTATIONS} == dict.fromkeys(NAME_ANNOTATIONS, "app")
    request = pb.ImageStatusRequest(image=pb.ImageSpec(image=ref), verbose=True)
    status = live_daemon.images.ImageStatus(request, timeout=30)
    assert status.image.spec.annotations[CRIO_NAME_ANNOTATION] == "app"
    assert json.loads(status.info["info"])["annotations"][CRIO_NAME_ANNOTATION] == "app"
    remove_image(live_daemon, ref)


def test_a_bad_archive_is_not_built_into_an_image(tmp_path: Path) -> None:
    archive = _synthetic_archive(tmp_path / "c.tar", "busybox", without="config.dump")
    built = crishim("images", "checkpoint-image", str(archive), "app:v1", "-o", str(tmp_path / "layout"))
    assert built.returncode != 0
    assert "is not a usable checkpoint archive: it lacks config.dump" in built.stderr
    assert not (tmp_path / "layout").exists()


def test_a_pulled_checkpoint_image_is_read_as_its_archive_by_create_container(
    live_daemon: Daemon, registry: RegistryServer, pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path
) -> None:
    archive = _synthetic_archive(tmp_path / "c.tar", ABSENT_BASE)
    ref = _push_checkpoint_image(registry, archive, tmp_path / "layout", "checkpoints/pulled")
    pull(live_daemon, ref)
    image = image_status(live_daemon, ref)
    assert image is not None
    assert image.spec.annotations[CRIO_NAME_ANNOTATION] == "app"
    assert _listed(live_daemon, ref).spec.annotations[CRIO_NAME_ANNOTATION] == "app"

    # The archive in its layer names a base image this node lacks: the refusal comes from reading it.
    sid, config = pod
    error = refusal(lambda: create_container(live_daemon, sid, config, _restore_config("app", ref)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert f"the base image {ABSENT_BASE!r} of checkpoint {ref!r} is not in the image store" in error.details()
    _nothing_left(live_daemon, sid)

    # The read is over: nothing holds the image, so RemoveImage deletes it and its layer's blob.
    layout_blobs = tmp_path / "layout" / "blobs" / "sha256"
    manifest_digest = json.loads((tmp_path / "layout" / "index.json").read_bytes())["manifests"][0]["digest"]
    layer_digest = json.loads((layout_blobs / manifest_digest[7:]).read_bytes())["layers"][0]["digest"]
    layer_blob = live_daemon.root / "images" / "blobs" / "sha256" / layer_digest[7:]
    assert layer_blob.is_file()
    remove_image(live_daemon, ref)
    assert image_status(live_daemon, ref) is None
    assert not layer_blob.exists()


def _push_built(registry: RegistryServer, repository: str, built: b.BuiltImage) -> str:
    with Pusher(registry.host) as pusher:
        pusher.push(repository, built, ["v1"])
    return f"{registry.host}/{repository}:v1"


def test_a_checkpoint_image_whose_layer_is_no_archive_is_invalid_argument(
    live_daemon: Daemon, registry: RegistryServer, pod: tuple[str, pb.PodSandboxConfig]
) -> None:
    layer = [b.directory("checkpoint"), b.regular("spec.dump", b"{}")]  # no config.dump
    image = b.build_image([layer], annotations={CRIO_NAME_ANNOTATION: "app"})
    ref = _push_built(registry, "checkpoints/broken", image)
    pull(live_daemon, ref)
    sid, config = pod
    error = refusal(lambda: create_container(live_daemon, sid, config, _restore_config("broken", ref)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"config.image.image: {ref!r} is not a usable checkpoint archive: it lacks config.dump" in error.details()
    _nothing_left(live_daemon, sid)
    remove_image(live_daemon, ref)


def test_a_checkpoint_image_of_two_layers_is_invalid_argument(
    live_daemon: Daemon, registry: RegistryServer, pod: tuple[str, pb.PodSandboxConfig]
) -> None:
    layers = [[b.regular("config.dump", b"{}")], [b.regular("spec.dump", b"{}")]]
    image = b.build_image(layers, annotations={"io.kubernetes.containerd.annotations.checkpoint.name": "app"})
    ref = _push_built(registry, "checkpoints/layered", image)
    pull(live_daemon, ref)
    sid, config = pod
    error = refusal(lambda: create_container(live_daemon, sid, config, _restore_config("layered", ref)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"checkpoint image {ref!r} has 2 layers" in error.details()
    _nothing_left(live_daemon, sid)
    remove_image(live_daemon, ref)
