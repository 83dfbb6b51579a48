"""critest after v1.36, "Image Volume [Feature:ImageVolume]": KEP-4639 image volumes.

Each spec pulls critest's test-image-tag:test, runs critest's pause container (`sh -c
top`) from the image ID the pull returned, with that same image mounted read-only at
/mnt/image-volume, and looks at the mount from inside the container or at the refusal.
critest skips where a runtime lacks image volumes; crishim has them, so every check here
is required.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

IMAGE = critest.STAGING + "test-image-tag:test"
MOUNT_PATH = "/mnt/image-volume"


def volume_container(image_ref: str, prefix: str, *, readonly: bool = True, sub_path: str = "") -> pb.ContainerConfig:
    """critest's container: the pulled image's ID run and mounted at /mnt/image-volume."""
    spec = pb.ImageSpec(image=image_ref, user_specified_image=IMAGE)
    mount = pb.Mount(container_path=MOUNT_PATH, readonly=readonly, image=spec, image_sub_path=sub_path)
    config = critest.container_config(prefix, command=critest.PAUSE_COMMAND, mounts=[mount])
    config.image.CopyFrom(spec)
    return config


@contextlib.contextmanager
def pulled_pod(daemon: Daemon) -> Iterator[tuple[str, str, pb.PodSandboxConfig]]:
    """framework.PullPublicImage, then critest's default pod: yields (image ref, pod id, pod config)."""
    image_ref = cri.pull(daemon, IMAGE, critest.IMAGE_PULL_POD)
    with critest.default_pod(daemon) as (pod_id, pod_config):
        yield image_ref, pod_id, pod_config


def create_refusal(
    daemon: Daemon, pod_id: str, pod_config: pb.PodSandboxConfig, config: pb.ContainerConfig
) -> grpc.RpcError:
    """The error CreateContainer fails with; a create that succeeds fails the test."""
    with pytest.raises(grpc.RpcError) as refused:
        cri.create_container(daemon, pod_id, pod_config, config)
    return refused.value


def test_image_volume_reports_the_image_digest_in_status(daemon: Daemon) -> None:
    """[k8s.io] Image Volume [Feature:ImageVolume] should return image digest in ContainerStatus mounts

    ContainerStatus lists the mount with the image's reference in ImageSpec.image_ref (KEP-5365).
    """
    with pulled_pod(daemon) as (image_ref, pod_id, pod_config):
        cid = cri.create_container(daemon, pod_id, pod_config, volume_container(image_ref, "image-volume-digest-test-"))
        mounts = [m for m in cri.container_status(daemon, cid).mounts if m.container_path == MOUNT_PATH]
        assert len(mounts) == 1, cri.container_status(daemon, cid).mounts
        assert mounts[0].image.image_ref == image_ref


def test_image_volume_is_mounted_read_only_and_executable(daemon: Daemon) -> None:
    """[k8s.io] Image Volume [Feature:ImageVolume] should correctly mount image and enforce read-only

    The image's files are at the mount point, a write there fails, and its binaries run (no noexec).
    """
    with pulled_pod(daemon) as (image_ref, pod_id, pod_config):
        cid = cri.create_container(daemon, pod_id, pod_config, volume_container(image_ref, "image-volume-mount-test-"))
        cri.start(daemon, cid)
        listed = cri.exec_sync(daemon, cid, ["ls", "-A", MOUNT_PATH + "/bin/sh"])
        assert listed.exit_code == 0, listed.stderr
        write = cri.exec_sync(daemon, cid, ["touch", MOUNT_PATH + "/test-write"])
        assert write.exit_code != 0
        assert b"Read-only file system" in write.stderr
        ran = cri.exec_sync(daemon, cid, [MOUNT_PATH + "/bin/ls", MOUNT_PATH])
        assert ran.exit_code == 0, ran.stderr
        assert "bin" in ran.stdout.decode().split()


def test_writable_image_volume_is_refused(daemon: Daemon) -> None:
    """[k8s.io] Image Volume [Feature:ImageVolume] should reject Image Volume with Readonly set to false"""
    with pulled_pod(daemon) as (image_ref, pod_id, pod_config):
        config = volume_container(image_ref, "image-volume-readonly-test-", readonly=False)
        refused = create_refusal(daemon, pod_id, pod_config, config)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.details() == (
            f"config.mounts[0].readonly is false for the image volume {image_ref!r} at {MOUNT_PATH!r}: "
            "image volumes are read-only; set readonly=true"
        )
        assert [c for c in cri.list_containers(daemon) if c.pod_sandbox_id == pod_id] == []


def test_image_volume_sub_path_mounts_that_directory(daemon: Daemon) -> None:
    """[k8s.io] Image Volume [Feature:ImageVolume] subPath should succeed when using a valid subPath

    With image_sub_path "etc", the image's /etc/passwd is at the mount point's top, not under etc/.
    """
    with pulled_pod(daemon) as (image_ref, pod_id, pod_config):
        config = volume_container(image_ref, "image-volume-subpath-test-", sub_path="etc")
        cid = cri.create_container(daemon, pod_id, pod_config, config)
        cri.start(daemon, cid)
        assert cri.exec_sync(daemon, cid, ["ls", MOUNT_PATH]).exit_code == 0
        assert cri.exec_sync(daemon, cid, ["ls", MOUNT_PATH + "/etc/passwd"]).exit_code != 0
        found = cri.exec_sync(daemon, cid, ["ls", MOUNT_PATH + "/passwd"])
        assert found.exit_code == 0, found.stderr


def test_image_volume_with_missing_sub_path_is_refused(daemon: Daemon) -> None:
    """[k8s.io] Image Volume [Feature:ImageVolume] subPath should fail when subPath does not exist in the image"""
    with pulled_pod(daemon) as (image_ref, pod_id, pod_config):
        config = volume_container(image_ref, "image-volume-subpath-fail-test-", sub_path="not-existing")
        refused = create_refusal(daemon, pod_id, pod_config, config)
        assert refused.code() == grpc.StatusCode.NOT_FOUND
        assert refused.details().startswith(f"config.mounts[0] (image {image_ref!r}): ")
        assert "'not-existing'" in refused.details()
        assert [c for c in cri.list_containers(daemon) if c.pod_sandbox_id == pod_id] == []
