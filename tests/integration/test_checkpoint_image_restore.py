"""Restore from a checkpoint image, the whole way: checkpoint -> image -> registry -> PullImage -> new pod.

A counting container is checkpointed, its archive packed as an image by
`crishim images checkpoint-image`, pushed to the test registry and pulled
back through PullImage as a kubelet would; CreateContainer naming that image in
another pod, then StartContainer, restores it and it counts on from where it was.
The restore needs a CRIU that works on this kernel (the node VM's); an image
carrying other annotations is an ordinary image on every node.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.images import build as b
from crishim.images.checkpoint_image import CRIO_NAME_ANNOTATION, checkpoint_name

from tests.integration.test_checkpoint import (
    COUNTER,
    _archived_count,
    _bundle,
    _checkpoint,
    _count,
    _restore_config,
    needs_criu,
)
from tests.integration.test_checkpoint_image import crishim
from tests.support import testimages as tb
from tests.support.cri import (
    container_config,
    container_status,
    create_container,
    eventually,
    exec_checked,
    exec_output,
    image_status,
    pull,
    remove_container,
    remove_image,
    remove_pod,
    run_pod,
    start,
    start_container,
    stop,
)
from tests.support.daemon import Daemon
from tests.support.push import Pusher, push_layout
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def pod(live_daemon: Daemon) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    sid, config = run_pod(live_daemon, "ckpt-source", handler="runc")  # CRIU through runc (crun lacks it)
    yield sid, config
    remove_pod(live_daemon, sid)


@pytest.fixture(scope="module")
def restore_pod(live_daemon: Daemon) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    sid, config = run_pod(live_daemon, "ckpt-restored", handler="runc", hostname="restored-pod")
    yield sid, config
    remove_pod(live_daemon, sid)


def test_a_counter_checkpointed_into_a_pulled_image_is_restored_in_a_new_pod_and_counts_on(
    live_daemon: Daemon, busybox: str, registry: RegistryServer, pod: tuple[str, pb.PodSandboxConfig],
    restore_pod: tuple[str, pb.PodSandboxConfig], tmp_path: Path,
) -> None:  # fmt: skip
    needs_criu()
    sid, config = pod
    counter = start_container(live_daemon, sid, config, container_config("counter", busybox, ["sh", "-c", COUNTER]))
    eventually(lambda: _count(live_daemon, counter), lambda n: n >= 3, what="the counter to count")
    archive = tmp_path / "counter.tar"
    _checkpoint(live_daemon, counter, str(archive))
    at_checkpoint = _archived_count(archive)

    ref = f"{registry.host}/checkpoints/counter:v1"
    built = crishim("images", "checkpoint-image", str(archive), ref, "-o", str(tmp_path / "layout"))
    assert built.returncode == 0, built.stderr
    push_layout(tmp_path / "layout", registry.host, "checkpoints/counter", tags=["v1"])
    pull(live_daemon, ref)
    image = image_status(live_daemon, ref)
    assert image is not None
    assert image.spec.annotations[CRIO_NAME_ANNOTATION] == "counter"

    restored_sid, restored_config = restore_pod
    cid = create_container(live_daemon, restored_sid, restored_config, _restore_config("counter", ref))
    assert cid != counter
    assert container_status(live_daemon, cid).state == pb.CONTAINER_CREATED
    bundle = _bundle(live_daemon, cid)
    inventory = bundle / "checkpoint" / "inventory.img"
    # CRIU's images are the files the pull unpacked into the image's layer, linked, not unpacked again.
    assert inventory.stat().st_nlink == 2
    remove_image(live_daemon, ref)  # linked at create: the restore needs the checkpoint image no more
    assert inventory.stat().st_nlink == 1

    start(live_daemon, cid)
    status = container_status(live_daemon, cid)
    assert status.state == pb.CONTAINER_RUNNING, status
    assert status.image.image == container_status(live_daemon, counter).image.image  # the base image, by name
    # The shell's counter lives in its memory: restored, it goes on from the checkpoint, not from 1.
    first = _count(live_daemon, cid)
    assert first >= at_checkpoint, (first, at_checkpoint)
    eventually(lambda: _count(live_daemon, cid), lambda n: n > first, what="the restored counter to count on")
    assert exec_checked(live_daemon, cid, ["cat", "/kept.txt"]) == "before\n"
    assert exec_output(live_daemon, cid, ["test", "-e", "/etc/group"])[0] != 0
    assert exec_checked(live_daemon, cid, ["hostname"]).strip() == "restored-pod"

    stop(live_daemon, cid, timeout=0)
    remove_container(live_daemon, cid)
    assert not bundle.exists()
    assert container_status(live_daemon, counter).state == pb.CONTAINER_RUNNING  # the original runs on
    stop(live_daemon, counter, timeout=0)
    remove_container(live_daemon, counter)


def test_an_image_with_other_annotations_is_an_ordinary_image(
    live_daemon: Daemon, registry: RegistryServer, pod: tuple[str, pb.PodSandboxConfig]
) -> None:
    annotations = {"org.opencontainers.image.description": "not a checkpoint"}
    # A label of its own: with the standard busybox's config it would be that image (one ID, one record).
    own = b.ImageConfig(cmd=("sh",), labels={"test": "ordinary"})
    built = b.build_image([tb.busybox_rootfs_layer()], own, annotations=annotations)
    with Pusher(registry.host) as pusher:
        pusher.push("checkpoints/plain", built, ["v1"])
    ref = f"{registry.host}/checkpoints/plain:v1"
    pull(live_daemon, ref)
    image = image_status(live_daemon, ref)
    assert image is not None
    assert dict(image.spec.annotations) == annotations
    assert checkpoint_name(image.spec.annotations) is None

    sid, config = pod
    cid = start_container(
        live_daemon, sid, config, container_config("plain", ref, ["sh", "-c", "echo plain > /plain; sleep 600"])
    )
    assert container_status(live_daemon, cid).state == pb.CONTAINER_RUNNING
    eventually(lambda: exec_output(live_daemon, cid, ["cat", "/plain"]), lambda out: out == (0, "plain\n"),
               what="the image's own command to run")  # fmt: skip
    stop(live_daemon, cid, timeout=0)
    remove_container(live_daemon, cid)
    remove_image(live_daemon, ref)
