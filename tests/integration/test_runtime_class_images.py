"""Runtime class images (KEP-4216) and per-handler features, through a live daemon.

The daemon here gives crun its own image set (`[runtimes.crun] separate_images = true`);
runc keeps the shared set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support.cri import code_of, container_config, pod_config, start_container, wait_exited
from tests.support.daemon import Daemon, running_daemon
from tests.support.images import TestImages

pytestmark = pytest.mark.root

# runc is named the default: crun, which would otherwise be chosen where it probes fully,
# is the handler with an image set of its own.
SEPARATE_CRUN = 'default_runtime = "runc"\n[runtimes.crun]\nseparate_images = true\n'


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon(SEPARATE_CRUN) as running:
        yield running


def spec(image: str, handler: str = "") -> pb.ImageSpec:
    return pb.ImageSpec(image=image, runtime_handler=handler)


def status_of(daemon: Daemon, image: str, handler: str = "") -> pb.Image | None:
    answer = daemon.images.ImageStatus(pb.ImageStatusRequest(image=spec(image, handler)), timeout=10)
    return answer.image if answer.HasField("image") else None


def listed(daemon: Daemon, handler: str | None = None) -> list[tuple[str, str]]:
    """(id, runtime_handler) of ListImages, unfiltered or filtered by handler."""
    request = pb.ListImagesRequest()
    if handler is not None:
        request.filter.image.runtime_handler = handler
    return [(i.id, i.spec.runtime_handler) for i in daemon.images.ListImages(request, timeout=10).images]


def pull(daemon: Daemon, image: str, handler: str = "") -> str:
    request = pb.PullImageRequest(image=spec(image, handler))
    return daemon.images.PullImage(request, timeout=120).image_ref


def remove(daemon: Daemon, image: str, handler: str = "") -> None:
    daemon.images.RemoveImage(pb.RemoveImageRequest(image=spec(image, handler)), timeout=30)


def layer_dirs(daemon: Daemon, image: str, handler: str) -> list[str]:
    answer = daemon.images.ImageStatus(pb.ImageStatusRequest(image=spec(image, handler), verbose=True))
    chains = json.loads(answer.info["info"])["chainIDs"]
    return [str(daemon.root / "images" / "layers" / c.split(":", 1)[1]) for c in chains]


def run_in_pod(daemon: Daemon, name: str, handler: str, config: pb.ContainerConfig) -> tuple[str, str]:
    """Runs a pod of `handler` and the container in it; returns (sandbox, container) IDs."""
    pod = pod_config(name, daemon)
    sid = daemon.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod, runtime_handler=handler), timeout=60
    ).pod_sandbox_id
    return sid, start_container(daemon, sid, pod, config)


def create_code(daemon: Daemon, name: str, handler: str, config: pb.ContainerConfig) -> grpc.StatusCode:
    pod = pod_config(name, daemon)
    sid = daemon.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=pod, runtime_handler=handler), timeout=60
    ).pod_sandbox_id
    try:
        request = pb.CreateContainerRequest(pod_sandbox_id=sid, config=config, sandbox_config=pod)
        return code_of(daemon.runtime.CreateContainer, request)
    finally:
        remove_pod(daemon, sid)


def remove_pod(daemon: Daemon, sid: str) -> None:
    daemon.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    daemon.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)


def test_a_separate_handler_pulls_lists_and_removes_its_own_images(daemon: Daemon, test_images: TestImages) -> None:
    image = test_images.ref("user-uid:latest")
    image_id = pull(daemon, image, "crun")
    assert status_of(daemon, image, "crun") is not None
    assert status_of(daemon, image_id, "crun") is not None
    # runc and the default handler share the one set, which does not have it.
    assert status_of(daemon, image) is None
    assert status_of(daemon, image, "runc") is None
    assert (image_id, "crun") in listed(daemon)
    assert (image_id, "crun") in listed(daemon, "crun")
    assert image_id not in [i for i, _ in listed(daemon, "runc")]
    # Each set lists only its own images: the built-in pause image is in the shared one.
    assert all(h == "crun" for _, h in listed(daemon, "crun"))
    assert all(h == "" for _, h in listed(daemon, "runc"))
    assert listed(daemon, "runc")

    # The same image in both sets: removing it from one leaves the other, and the layers.
    assert pull(daemon, image, "runc") == image_id
    assert sorted(h for i, h in listed(daemon) if i == image_id) == ["", "crun"]
    layers = layer_dirs(daemon, image, "crun")
    remove(daemon, image, "crun")
    assert status_of(daemon, image, "crun") is None
    assert status_of(daemon, image, "runc") is not None
    assert [h for i, h in listed(daemon) if i == image_id] == [""]
    assert all(Path(d).is_dir() for d in layers)
    remove(daemon, image)  # the default handler is runc: the shared set
    assert image_id not in [i for i, _ in listed(daemon)]
    assert not any(Path(d).exists() for d in layers)


def test_containers_resolve_images_in_their_sandbox_handlers_set(daemon: Daemon, test_images: TestImages) -> None:
    image = test_images.ref("user-name:latest")
    pull(daemon, image)  # shared set only
    config = container_config("whoami", image, ["id", "-u"])
    assert create_code(daemon, "crun-unpulled", "crun", config) == grpc.StatusCode.NOT_FOUND
    sid, cid = run_in_pod(daemon, "runc-shared", "runc", config)
    try:
        assert wait_exited(daemon, cid).exit_code == 0
    finally:
        remove_pod(daemon, sid)

    pull(daemon, image, "crun")
    remove(daemon, image)  # gone from the shared set: crun's copy is what the crun pod uses
    sid, cid = run_in_pod(daemon, "crun-own", "crun", config)
    try:
        status = wait_exited(daemon, cid)
        assert status.exit_code == 0, status.message
        # While the crun container exists, RemoveImage in crun's set leaves it working.
        remove(daemon, image, "crun")
        assert status_of(daemon, image, "crun") is None
        assert (
            daemon.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=10).status.image_id
            == status.image_id
        )
    finally:
        remove_pod(daemon, sid)


def test_image_volumes_resolve_in_the_sandbox_handlers_set(daemon: Daemon, test_images: TestImages) -> None:
    busybox, artifact = test_images.ref("busybox:latest"), test_images.ref("artifact:latest")
    pull(daemon, busybox, "crun")
    pull(daemon, artifact)  # shared set only
    mount = pb.Mount(container_path="/model", image=pb.ImageSpec(image=artifact), readonly=True)
    config = container_config("reader", busybox, ["cat", "/model/content/hello.txt"], mounts=[mount])
    assert create_code(daemon, "crun-volume-unpulled", "crun", config) == grpc.StatusCode.NOT_FOUND
    pull(daemon, artifact, "crun")
    sid, cid = run_in_pod(daemon, "crun-volume", "crun", config)
    try:
        status = wait_exited(daemon, cid)
        assert status.exit_code == 0, status.message
        (reported,) = [m for m in status.mounts if m.image.image]
        assert reported.image.image_ref == status_of(daemon, artifact, "crun").id  # type: ignore[union-attr]
    finally:
        remove_pod(daemon, sid)


def test_unknown_runtime_handler_in_an_image_spec_is_invalid(daemon: Daemon, test_images: TestImages) -> None:
    image = test_images.ref("busybox:latest")
    for call, request in [
        (daemon.images.PullImage, pb.PullImageRequest(image=spec(image, "kata"))),
        (daemon.images.ImageStatus, pb.ImageStatusRequest(image=spec(image, "kata"))),
        (daemon.images.RemoveImage, pb.RemoveImageRequest(image=spec(image, "kata"))),
        (daemon.images.ListImages, pb.ListImagesRequest(filter=pb.ImageFilter(image=spec("", "kata")))),
    ]:
        assert code_of(call, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_status_reports_each_handlers_probed_features(daemon: Daemon) -> None:
    answer = daemon.runtime.Status(pb.StatusRequest(verbose=True), timeout=10)
    handlers = {h.name: h.features for h in answer.runtime_handlers}
    assert set(handlers) == {"", "runc", "crun"}
    probed = json.loads(answer.info["handlers"])
    for name in ("runc", "crun"):
        # Both Debian builds here honour `rro`: the start-up probe saw a read-only bind.
        assert handlers[name].recursive_read_only_mounts is True
        assert probed[name]["recursive_read_only"] is True
        assert handlers[name].user_namespaces == probed[name]["user_namespaces"]
    assert handlers[""] == handlers["runc"]  # the default handler
