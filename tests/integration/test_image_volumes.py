"""Image volumes (KEP-4639) through the live daemon: a data image mounted read-only into containers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.images import build as b

from tests.support import testimages as tb
from tests.support.cri import container_config, container_status, remove_pod, run_pod, start_container
from tests.support.daemon import Daemon
from tests.support.images import REPO_PREFIX, TestImages
from tests.support.push import Credentials, Pusher
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.root

WEIGHTS = bytes(range(256)) * 64


@pytest.fixture(scope="module")
def data_image(registry: RegistryServer) -> str:
    """A data-only image of three layers: the second whites out a file and a directory of the first."""
    built = tb.build_artifact(
        [
            [
                b.directory("data"),
                b.regular("data/a.txt", b"layer one\n"),
                b.regular("data/gone.txt", b"whited out\n"),
                b.directory("data/dropped"),
                b.regular("data/dropped/x", b"x\n"),
                b.directory("data/sub"),
                b.regular("data/sub/inner.txt", b"inner\n"),
                b.directory("models"),
                b.regular("models/weights.bin", WEIGHTS),
            ],
            [
                b.whiteout("data/gone.txt"),
                b.whiteout("data/dropped"),
                b.regular("data/b.txt", b"layer two\n"),
            ],
            [b.regular("data/sub/second.txt", b"layer three\n"), b.symlink("data/escape", "/etc")],
        ]
    )
    creds = Credentials(registry.username, registry.password) if registry.username else None
    with Pusher(registry.host, credentials=creds) as pusher:
        pusher.push(f"{REPO_PREFIX}/volume-data", built, ["v1"])
    return f"{registry.host}/{REPO_PREFIX}/volume-data:v1"


@pytest.fixture(scope="module")
def oci_artifact(registry: RegistryServer) -> str:
    """An OCI 1.1 artifact: the empty config `{}` (no rootfs, nothing to run) and two tar layers,
    one plain and one gzipped, with custom media types as model registries use."""
    plain = b.build_layer([b.directory("model"), b.regular("model/config.json", b'{"dim": 8}\n')], "none")
    packed = b.build_layer([b.directory("model"), b.regular("model/weights.bin", WEIGHTS)], "gzip")
    empty = b"{}"
    empty_digest = "sha256:" + hashlib.sha256(empty).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.model.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest, "size": 2},
        "layers": [
            {"mediaType": "application/vnd.example.model.config.v1.tar", "digest": plain.digest, "size": plain.size},
            {
                "mediaType": "application/vnd.example.model.weights.v1.tar+gzip",
                "digest": packed.digest,
                "size": packed.size,
            },
        ],
    }
    repository = f"{REPO_PREFIX}/model-artifact"
    creds = Credentials(registry.username, registry.password) if registry.username else None
    with Pusher(registry.host, credentials=creds) as pusher:
        for digest, data in [(empty_digest, empty), (plain.digest, plain.data), (packed.digest, packed.data)]:
            pusher.push_blob(repository, digest, data)
        pusher.push_manifest(
            repository, "v1", json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json"
        )
    return f"{registry.host}/{repository}:v1"


@pytest.fixture(scope="module")
def pulled_data(live_daemon: Daemon, data_image: str) -> str:
    """The data image pulled once; returns its image ID."""
    return live_daemon.images.PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image=data_image)), timeout=120
    ).image_ref


@pytest.fixture
def pod(live_daemon: Daemon, request: pytest.FixtureRequest) -> Iterator[tuple[str, pb.PodSandboxConfig]]:
    sid, config = run_pod(live_daemon, request.node.name.replace("_", "-")[:40])
    try:
        yield sid, config
    finally:
        remove_pod(live_daemon, sid)


def image_mount(image: str, path: str = "/vol", sub_path: str = "") -> pb.Mount:
    return pb.Mount(container_path=path, image=pb.ImageSpec(image=image), image_sub_path=sub_path, readonly=True)


def sleeper(name: str, busybox: str, *mounts: pb.Mount) -> pb.ContainerConfig:
    return container_config(name, busybox, ["sleep", "3600"], mounts=list(mounts))


def run(daemon: Daemon, cid: str, script: str) -> pb.ExecSyncResponse:
    return daemon.runtime.ExecSync(
        pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=10), timeout=20
    )


def volume_mounts(daemon: Daemon) -> list[str]:
    """Mount points of image volumes (and their staging mounts) the daemon holds on the host."""
    base = str(daemon.dir)
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [p for p in points if p.startswith(base) and ("/volumes/" in p or "volume-staging" in p)]


def chain_dirs(daemon: Daemon, chain_ids: list[str]) -> list[Path]:
    return [daemon.root / "images" / "layers" / c.split(":", 1)[1] for c in chain_ids]


def test_data_image_is_mounted_read_only_with_its_whiteouts(
    live_daemon: Daemon, busybox: str, data_image: str, pulled_data: str, pod: tuple[str, pb.PodSandboxConfig]
) -> None:
    sid, config = pod
    cid = start_container(live_daemon, sid, config, sleeper("reader", busybox, image_mount(data_image)))
    listing = run(live_daemon, cid, "cd /vol/data && ls -A . sub && cat a.txt b.txt sub/second.txt")
    assert listing.exit_code == 0, listing.stderr
    lines = listing.stdout.decode().splitlines()
    assert "gone.txt" not in lines
    assert "dropped" not in lines
    assert {"a.txt", "b.txt", "sub", "escape", "inner.txt", "second.txt"} <= set(lines)
    assert lines[-3:] == ["layer one", "layer two", "layer three"]
    weights = run(live_daemon, cid, "md5sum /vol/models/weights.bin | cut -d' ' -f1")
    assert weights.stdout.decode().strip() == hashlib.md5(WEIGHTS).hexdigest()

    for target in ("/vol/new", "/vol/data/a.txt", "/vol/data/gone.txt"):
        write = run(live_daemon, cid, f"echo x > {target}")
        assert write.exit_code != 0
        assert b"Read-only file system" in write.stderr, write.stderr  # EROFS
    assert run(live_daemon, cid, "rm /vol/data/b.txt").exit_code != 0
    assert run(live_daemon, cid, "cat /vol/data/b.txt").stdout == b"layer two\n"

    status = container_status(live_daemon, cid)
    (reported,) = [m for m in status.mounts if m.container_path == "/vol"]
    assert reported.image.image == data_image
    assert reported.image.image_ref == pulled_data


def test_sub_path_mounts_only_that_directory_or_file(
    live_daemon: Daemon, busybox: str, data_image: str, pulled_data: str, pod: tuple[str, pb.PodSandboxConfig]
) -> None:
    sid, config = pod
    mounts = (image_mount(data_image, "/sub", "data/sub"), image_mount(data_image, "/one.txt", "data/a.txt"))
    cid = start_container(live_daemon, sid, config, sleeper("sub", busybox, *mounts))
    answer = run(live_daemon, cid, "ls -A /sub; cat /one.txt")
    assert answer.exit_code == 0, answer.stderr
    assert answer.stdout.decode().splitlines() == ["inner.txt", "second.txt", "layer one"]
    write = run(live_daemon, cid, "touch /sub/new")
    assert write.exit_code != 0
    assert b"Read-only file system" in write.stderr
    status = container_status(live_daemon, cid)
    assert {m.container_path: m.image_sub_path for m in status.mounts if m.image.image} == {
        "/sub": "data/sub",
        "/one.txt": "data/a.txt",
    }


def test_missing_or_escaping_sub_path_is_refused_and_leaves_nothing_mounted(
    live_daemon: Daemon, busybox: str, data_image: str, pulled_data: str, pod: tuple[str, pb.PodSandboxConfig]
) -> None:
    sid, config = pod
    before = volume_mounts(live_daemon)
    for sub_path, code, named in [
        ("data/no-such-dir", grpc.StatusCode.NOT_FOUND, "data/no-such-dir"),
        ("data/gone.txt", grpc.StatusCode.NOT_FOUND, "data/gone.txt"),  # whited out
        ("data/escape", grpc.StatusCode.INVALID_ARGUMENT, "data/escape"),  # symlink out of the image
        ("../data", grpc.StatusCode.INVALID_ARGUMENT, "../data"),
    ]:
        request = pb.CreateContainerRequest(
            pod_sandbox_id=sid,
            config=sleeper("bad-sub", busybox, image_mount(data_image, "/vol", sub_path)),
            sandbox_config=config,
        )
        with pytest.raises(grpc.RpcError) as failed:
            live_daemon.runtime.CreateContainer(request, timeout=60)
        assert failed.value.code() == code, failed.value.details()
        assert named in (failed.value.details() or "")
        assert "config.mounts[0]" in (failed.value.details() or "")
    assert volume_mounts(live_daemon) == before
    listed = live_daemon.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
    assert not [c for c in listed if c.pod_sandbox_id == sid]


def test_image_volume_of_an_image_not_pulled_is_not_found(
    live_daemon: Daemon, busybox: str, registry: RegistryServer, pod: tuple[str, pb.PodSandboxConfig]
) -> None:
    sid, config = pod
    missing = f"{registry.host}/{REPO_PREFIX}/never-pulled:v1"
    request = pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=sleeper("unpulled", busybox, image_mount(missing)), sandbox_config=config
    )
    with pytest.raises(grpc.RpcError) as failed:
        live_daemon.runtime.CreateContainer(request, timeout=60)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing in (failed.value.details() or "")
    assert "pull" in (failed.value.details() or "")


def test_artifact_without_a_command_serves_as_a_volume(
    live_daemon: Daemon, busybox: str, test_images: TestImages, pod: tuple[str, pb.PodSandboxConfig]
) -> None:
    artifact = test_images.ref("artifact:latest")
    live_daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=artifact)), timeout=120)
    sid, config = pod
    volume = image_mount(artifact, "/model")
    cid = start_container(live_daemon, sid, config, sleeper("model", busybox, volume))
    assert run(live_daemon, cid, "cat /model/content/hello.txt").stdout == b"hello from an image volume\n"


def test_shared_volume_survives_remove_image_until_its_last_container_goes(
    live_daemon: Daemon, busybox: str, data_image: str, pulled_data: str, pod: tuple[str, pb.PodSandboxConfig]
) -> None:
    images, rt = live_daemon.images, live_daemon.runtime
    sid, config = pod
    status = images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=data_image), verbose=True))
    layers = chain_dirs(live_daemon, json.loads(status.info["info"])["chainIDs"])
    assert len(layers) == 3
    assert all(d.is_dir() for d in layers)
    before = volume_mounts(live_daemon)

    first = start_container(live_daemon, sid, config, sleeper("first", busybox, image_mount(data_image)))
    second = start_container(live_daemon, sid, config, sleeper("second", busybox, image_mount(data_image, "/shared")))
    assert len(volume_mounts(live_daemon)) == len(before) + 2
    images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=data_image)), timeout=30)
    gone = images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=pulled_data)), timeout=10)
    assert not gone.HasField("image")
    listed = images.ListImages(pb.ListImagesRequest(), timeout=10).images
    assert pulled_data not in [i.id for i in listed]

    # The running containers do not notice; the layers stay while a volume shows them.
    assert run(live_daemon, first, "cat /vol/data/a.txt").stdout == b"layer one\n"
    assert run(live_daemon, second, "cat /shared/data/b.txt").stdout == b"layer two\n"
    assert all(d.is_dir() for d in layers)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=first), timeout=60)
    assert run(live_daemon, second, "cat /shared/data/sub/second.txt").stdout == b"layer three\n"
    assert all(d.is_dir() for d in layers)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=second), timeout=60)

    assert volume_mounts(live_daemon) == before
    assert not any(d.exists() for d in layers)
    # Pulling it again after the removal works and brings the layers back.
    again = images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=data_image)), timeout=120)
    assert again.image_ref == pulled_data
    assert all(d.is_dir() for d in layers)


def test_removing_the_pod_unmounts_every_image_volume(
    live_daemon: Daemon, busybox: str, data_image: str, pulled_data: str
) -> None:
    before = volume_mounts(live_daemon)
    sid, config = run_pod(live_daemon, "volumes-pod-removal")
    try:
        start_container(live_daemon, sid, config, sleeper("a", busybox, image_mount(data_image)))
        sub = image_mount(data_image, "/s", "data")
        start_container(live_daemon, sid, config, sleeper("b", busybox, sub))
        assert len(volume_mounts(live_daemon)) == len(before) + 2
    finally:
        remove_pod(live_daemon, sid)
    assert volume_mounts(live_daemon) == before


def test_oci_artifact_with_an_empty_config_serves_as_a_volume(
    live_daemon: Daemon, busybox: str, oci_artifact: str, pod: tuple[str, pb.PodSandboxConfig]
) -> None:
    image = pb.ImageSpec(image=oci_artifact)
    pulled = live_daemon.images.PullImage(pb.PullImageRequest(image=image), timeout=120)
    listed = live_daemon.images.ImageStatus(pb.ImageStatusRequest(image=image), timeout=10)
    assert listed.image.id == pulled.image_ref
    sid, config = pod
    volume = image_mount(oci_artifact, "/models", "model")
    cid = start_container(live_daemon, sid, config, sleeper("model", busybox, volume))
    answer = run(live_daemon, cid, "ls /models; cat /models/config.json; md5sum /models/weights.bin")
    assert answer.exit_code == 0, answer.stderr
    lines = answer.stdout.decode().splitlines()
    assert lines[:3] == ["config.json", "weights.bin", '{"dim": 8}']
    assert lines[3].split()[0] == hashlib.md5(WEIGHTS).hexdigest()
    # Nothing in it can run: as a container image it is refused with a reason.
    request = pb.CreateContainerRequest(
        pod_sandbox_id=sid, config=container_config("run-artifact", oci_artifact, []), sandbox_config=config
    )
    with pytest.raises(grpc.RpcError) as refused:
        live_daemon.runtime.CreateContainer(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
