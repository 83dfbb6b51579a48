"""critest "Image Consistency" and "Image Identifier Consistency": what a pull or removal shows at once,
and one image ID across PullImage, ImageStatus, ListContainers and ContainerStatus."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.critest import IMAGE_PULL_POD, STAGING
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

WITH_TAG = STAGING + "test-image-tag:test"
SAME_IMAGE_REGISTRIES = ["registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"]


def _listed(daemon: Daemon, ref: str) -> bool:
    return any(ref in image.repo_tags for image in cri.list_images(daemon, pb.ImageFilter()))


def test_removed_image_is_gone_at_once(daemon: Daemon) -> None:
    """[k8s.io] Image Consistency should not list or get image status immediately after removal
    [Conformance] [Serial]"""
    critest.remove_image_if_present(daemon, WITH_TAG)
    cri.pull(daemon, WITH_TAG, IMAGE_PULL_POD)
    critest.remove_image_if_present(daemon, WITH_TAG)
    assert not _listed(daemon, WITH_TAG)
    assert cri.image_status(daemon, WITH_TAG) is None


def test_pulled_image_is_visible_at_once(daemon: Daemon) -> None:
    """[k8s.io] Image Consistency should list and get image status immediately after pulling
    [Conformance] [Serial]"""
    critest.remove_image_if_present(daemon, WITH_TAG)
    cri.pull(daemon, WITH_TAG, IMAGE_PULL_POD)
    try:
        assert _listed(daemon, WITH_TAG)
        assert cri.image_status(daemon, WITH_TAG) is not None
    finally:
        critest.remove_image_if_present(daemon, WITH_TAG)


def test_concurrent_removals_all_succeed(daemon: Daemon) -> None:
    """[k8s.io] Image Consistency should not fail on simultaneous RemoveImage calls [Conformance] [Serial]"""
    critest.remove_image_if_present(daemon, WITH_TAG)
    cri.pull(daemon, WITH_TAG, IMAGE_PULL_POD)
    status = cri.image_status(daemon, WITH_TAG)
    assert status is not None
    image_id = status.id

    def remove_then_look() -> tuple[object, bool]:
        code = cri.rpc_code(lambda: cri.remove_image(daemon, image_id))
        return code, cri.image_status(daemon, image_id) is not None

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: remove_then_look(), range(5)))
    for code, still_there in results:
        assert code == grpc.StatusCode.OK, f"a concurrent RemoveImage failed with {code}"
        assert not still_there, "the image was still there after a RemoveImage returned"
    assert cri.image_status(daemon, image_id) is None


def _container_from_ref(
    daemon: Daemon, pod_id: str, cfg: pb.PodSandboxConfig, prefix: str, image_ref: str, user_ref: str
) -> str:
    # critest creates this container directly: image = the pulled image_ref, no command, no Linux config.
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=prefix + critest.new_uuid(), attempt=critest.DEFAULT_ATTEMPT),
        image=pb.ImageSpec(image=image_ref, user_specified_image=user_ref),
    )
    return cri.create_container(daemon, pod_id, cfg, config)


def test_one_image_id_across_all_apis(daemon: Daemon) -> None:
    """[k8s.io] Image Identifier Consistency should return the same image identifier across all APIs
    [Conformance] [Serial]"""
    image_ref = cri.pull(daemon, WITH_TAG, IMAGE_PULL_POD)
    assert image_ref
    try:
        status = cri.image_status(daemon, WITH_TAG)
        assert status is not None
        with critest.default_pod(daemon) as (pod_id, cfg):
            cid = _container_from_ref(daemon, pod_id, cfg, "id-consistency-", image_ref, WITH_TAG)
            try:
                cri.start(daemon, cid)
                c_status = cri.container_status(daemon, cid)
                listed = cri.list_containers(daemon, pb.ContainerFilter(id=cid))
                assert len(listed) == 1
                assert status.id == image_ref, "Image.id must equal PullImageResponse.image_ref"
                # critest skips rather than fails when image_id is left empty; we require it.
                assert c_status.image_id == image_ref, "ContainerStatus.image_id must equal image_ref"
                assert listed[0].image_id == image_ref, "Container.image_id must equal image_ref"
            finally:
                cri.remove_container(daemon, cid)
    finally:
        critest.remove_image_if_present(daemon, WITH_TAG)


def test_one_image_id_from_two_registries(daemon: Daemon) -> None:
    """[k8s.io] Image Identifier Consistency should return the same image identifier when pulled
    from different registries [Conformance] [Serial]"""
    first, second = SAME_IMAGE_REGISTRIES
    ref1 = cri.pull(daemon, first, IMAGE_PULL_POD)
    ref2 = cri.pull(daemon, second, IMAGE_PULL_POD)
    try:
        assert ref1
        assert ref1 == ref2
        for name in (first, second):
            status = cri.image_status(daemon, name)
            assert status is not None, name
            assert status.id == ref1, name
        with critest.default_pod(daemon) as (pod_id, cfg):
            cid = _container_from_ref(daemon, pod_id, cfg, "id-consistency-multi-registry-", ref2, second)
            try:
                cri.start(daemon, cid)
                assert cri.container_status(daemon, cid).image_id == ref1
            finally:
                cri.remove_container(daemon, cid)
    finally:
        critest.remove_image_if_present(daemon, first)
        critest.remove_image_if_present(daemon, second)
