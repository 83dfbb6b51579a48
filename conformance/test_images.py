"""critest "Image Manager": pull, status, list and remove images by tag, digest and ID."""

from __future__ import annotations

import grpc
import httpx
import pytest
from crishim.cri_api import api_pb2 as pb

from tests.support import cri, critest
from tests.support.critest import IMAGE_PULL_POD, STAGING
from tests.support.daemon import Daemon

pytestmark = pytest.mark.root

WITH_TAG = STAGING + "test-image-tag:test"
WITHOUT_TAG = STAGING + "test-image-latest"
ALL_REFERENCES = STAGING + "test-image-tag:all"
DIFFERENT_IMAGES = [STAGING + f"test-image-{n}:latest" for n in (1, 2, 3)]
SAME_IMAGE_TAGS = [STAGING + f"test-image-tags:{n}" for n in (1, 2, 3)]
SAME_IMAGE_REGISTRIES = ["registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"]
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def _pull_and_remove(daemon: Daemon, ref: str) -> pb.Image:
    """critest's testPullPublicImage: absent first, pull, status present, remove by ID, status gone."""
    critest.remove_image_if_present(daemon, ref)
    cri.pull(daemon, critest.normalize_image(ref), IMAGE_PULL_POD)
    status = cri.image_status(daemon, ref)
    assert status is not None, f"ImageStatus({ref}) found nothing right after the pull"
    assert status.id
    cri.remove_image(daemon, status.id)
    assert cri.image_status(daemon, ref) is None, f"{ref} is still there after RemoveImage({status.id})"
    return status


def test_pull_by_tag_then_remove(daemon: Daemon) -> None:
    """[k8s.io] Image Manager public image with tag should be pulled and removed [Conformance] [Serial]"""
    status = _pull_and_remove(daemon, WITH_TAG)
    assert list(status.repo_tags) == [WITH_TAG]


def test_pull_with_expired_deadline_fails_deadline_exceeded(daemon: Daemon) -> None:
    """[k8s.io] Image Manager public image should timeout if requested [Conformance] [Serial]"""
    # Usually the deadline passes in the client before any answer, and the refusal is gRPC's
    # own; on a busy node the daemon may see the deadline end the pull first and answer it.
    error = cri.refusal(
        lambda: daemon.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=WITH_TAG)), timeout=0.001)
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details() in {
        "Deadline Exceeded",
        "PullImage: the call's deadline passed before it finished; give it a longer timeout",
    }


def test_pull_without_tag_gets_latest(daemon: Daemon) -> None:
    """[k8s.io] Image Manager public image without tag should be pulled and removed [Conformance] [Serial]"""
    status = _pull_and_remove(daemon, WITHOUT_TAG)
    assert list(status.repo_tags) == [WITHOUT_TAG + ":latest"]


def test_pull_by_digest_has_digest_and_no_tag(daemon: Daemon, registry, critest_images) -> None:
    """[k8s.io] Image Manager public image with digest should be pulled and removed [Conformance] [Serial]"""
    # critest pulls test-image-digest@sha256:9700f9a2..., a digest of upstream bytes we cannot
    # rebuild; our test-image-digest has its own digest, which we ask the registry for.
    resp = httpx.head(
        f"{registry.url}/v2/k8s-staging-cri-tools/test-image-digest/manifests/latest",
        headers={"Accept": MANIFEST_TYPES},
        timeout=10,
    )
    resp.raise_for_status()
    ref = f"{STAGING}test-image-digest@{resp.headers['Docker-Content-Digest']}"
    status = _pull_and_remove(daemon, ref)
    assert list(status.repo_tags) == []
    assert list(status.repo_digests) == [ref]


def test_image_status_by_id_tag_and_digest_agree(daemon: Daemon) -> None:
    """[k8s.io] Image Manager image status should support all kinds of references [Conformance] [Serial]"""
    critest.remove_image_if_present(daemon, ALL_REFERENCES)
    cri.pull(daemon, ALL_REFERENCES, IMAGE_PULL_POD)
    status = cri.image_status(daemon, ALL_REFERENCES)
    assert status is not None
    for ref in [status.id, *status.repo_tags, *status.repo_digests]:
        assert cri.image_status(daemon, ref) == status, f"ImageStatus({ref}) differs"
    cri.remove_image(daemon, status.id)
    assert cri.image_status(daemon, ALL_REFERENCES) is None


@pytest.mark.parametrize(
    ("image", "uid", "username"),
    [
        pytest.param(STAGING + "test-image-user-uid", 1002, "", id="uid-only"),
        pytest.param(STAGING + "test-image-user-username", 0, "www-data", id="username-only"),
        pytest.param(STAGING + "test-image-user-uid-group", 1003, "", id="uid-group"),
        pytest.param(STAGING + "test-image-user-username-group", 0, "www-data", id="username-group"),
    ],
)
def test_image_status_reports_image_user(daemon: Daemon, image: str, uid: int, username: str) -> None:
    """[k8s.io] Image Manager image status get image fields should not have Uid|Username empty
    [Conformance] [Serial]"""
    cri.pull(daemon, critest.normalize_image(image), IMAGE_PULL_POD)
    try:
        status = cri.image_status(daemon, critest.normalize_image(image))
        assert status is not None
        assert status.uid.value == uid
        assert status.username == username
    finally:
        critest.remove_image_if_present(daemon, critest.normalize_image(image))


def _pull_all(daemon: Daemon, refs: list[str]) -> list[str]:
    for ref in refs:
        critest.remove_image_if_present(daemon, ref)
    return [cri.pull(daemon, ref, IMAGE_PULL_POD) for ref in refs]


def _remove_all(daemon: Daemon, refs: list[str]) -> None:
    for ref in refs:
        critest.remove_image_if_present(daemon, ref)


def test_list_images_shows_three_distinct_images(daemon: Daemon) -> None:
    """[k8s.io] Image Manager listImage should get exactly 3 image in the result list
    [Conformance] [Serial]"""
    ids = _pull_all(daemon, DIFFERENT_IMAGES)
    try:
        assert len(set(ids)) == 3, ids
        by_id = {image.id: image for image in cri.list_images(daemon, pb.ImageFilter())}
        for ref, image_id in zip(DIFFERENT_IMAGES, ids, strict=True):
            assert image_id in by_id, f"{ref} ({image_id}) is not listed"
            assert list(by_id[image_id].repo_tags) == [ref]
    finally:
        _remove_all(daemon, DIFFERENT_IMAGES)


def test_list_images_shows_three_tags_of_one_image(daemon: Daemon) -> None:
    """[k8s.io] Image Manager listImage should get exactly 3 repoTags in the result image
    [Conformance] [Serial]"""
    ids = _pull_all(daemon, SAME_IMAGE_TAGS)
    try:
        assert len(set(ids)) == 1, ids
        listed = [i for i in cri.list_images(daemon, pb.ImageFilter()) if i.id == ids[0]]
        assert listed, f"{ids[0]} is not listed"
        assert sorted(listed[0].repo_tags) == sorted(SAME_IMAGE_TAGS)
    finally:
        _remove_all(daemon, SAME_IMAGE_TAGS)


def _remove_by_one_name_removes_all(daemon: Daemon, refs: list[str]) -> None:
    _pull_all(daemon, refs)
    try:
        found = [i for i in cri.list_images(daemon, pb.ImageFilter()) if refs[0] in i.repo_tags]
        assert found, f"{refs[0]} is not listed after the pull"
        assert sorted(found[0].repo_tags) == sorted(refs)
        critest.remove_image_if_present(daemon, refs[0])
        for ref in [*refs, found[0].id]:
            assert cri.image_status(daemon, ref) is None, f"{ref} survived RemoveImage({refs[0]})"
    finally:
        _remove_all(daemon, refs)


def test_remove_image_by_one_tag_removes_all_tags(daemon: Daemon) -> None:
    """[k8s.io] Image Manager removing image by one tag should remove all tags [Conformance] [Serial]"""
    _remove_by_one_name_removes_all(daemon, SAME_IMAGE_TAGS)


def test_remove_image_from_one_registry_removes_other_registry_tags(daemon: Daemon) -> None:
    """[k8s.io] Image Manager removing image from one registry should remove all tags
    from other registries [Conformance] [Serial]"""
    _remove_by_one_name_removes_all(daemon, SAME_IMAGE_REGISTRIES)
