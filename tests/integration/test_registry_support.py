"""Push to a real docker-registry and read back: digests, auth, layouts, critest's images."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import httpx
import pytest
from crishim.images import build as b
from crishim.images.errors import PermissionDenied
from crishim.images.pause import PAUSE_IMAGE, build_pause_layout

from tests.support.images import REPO_PREFIX, TestImages
from tests.support.images import test_images as test_images  # fixture
from tests.support.push import Credentials, Pusher, push_image, push_layout
from tests.support.registry import RegistryServer
from tests.support.registry import auth_registry as auth_registry  # fixture
from tests.support.registry import registry as registry  # fixture
from tests.support.registry import token_registry as token_registry  # fixture

ROOT = Path(__file__).resolve().parents[2]
ACCEPT = [b.OCI_INDEX, b.OCI_MANIFEST, b.DOCKER_LIST, b.DOCKER_MANIFEST]


def test_pushed_images_read_back_with_same_digests(registry: RegistryServer, test_images: TestImages) -> None:
    with Pusher(registry.host) as client:
        for name, built in test_images.built.items():
            repo, _, tag = name.partition(":")
            response = client.get_manifest(f"{REPO_PREFIX}/{repo}", tag, ACCEPT)
            assert response.content == built.manifest
            assert response.headers["docker-content-digest"] == built.digest
            assert response.headers["content-type"] == built.media_type
            images = built.images if isinstance(built, b.BuiltIndex) else (built,)
            for image in images:
                for digest, data in image.blobs().items():
                    if digest == image.digest:
                        continue
                    fetched = client.get_blob(f"{REPO_PREFIX}/{repo}", digest)
                    assert b.sha256_digest(fetched) == digest
                    assert fetched == data


def test_index_children_are_fetchable_by_digest(registry: RegistryServer, test_images: TestImages) -> None:
    index = test_images.built["multiarch:latest"]
    assert isinstance(index, b.BuiltIndex)
    with Pusher(registry.host) as client:
        for image in index.images:
            got = client.get_manifest(f"{REPO_PREFIX}/multiarch", image.digest, ACCEPT)
            assert json.loads(got.content)["config"]["digest"] == image.config_digest


def test_basic_auth_registry_refuses_anonymous_and_accepts_credentials(auth_registry: RegistryServer) -> None:
    image = b.build_image([[b.regular("hello", b"world")]])
    with pytest.raises(PermissionDenied):
        push_image(auth_registry.host, "private/img", image, ["v1"])
    creds = Credentials(auth_registry.username, auth_registry.password)
    digest = push_image(auth_registry.host, "private/img", image, ["v1"], credentials=creds)
    anonymous = httpx.get(f"{auth_registry.url}/v2/private/img/manifests/v1", headers={"Accept": b.OCI_MANIFEST})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic")
    with Pusher(auth_registry.host, credentials=creds) as client:
        assert client.get_manifest("private/img", "v1", ACCEPT).headers["docker-content-digest"] == digest
    with (
        Pusher(auth_registry.host, credentials=Credentials(auth_registry.username, "wrong")) as client,
        pytest.raises(PermissionDenied),
    ):
        client.get_manifest("private/img", "v1", ACCEPT)


def test_token_auth_registry_needs_a_token_for_the_right_user(token_registry: RegistryServer) -> None:
    image = b.build_image([[b.regular("hello", b"token")]])
    creds = Credentials(token_registry.username, token_registry.password)
    digest = push_image(token_registry.host, "private/tok", image, ["v1"], credentials=creds)
    anonymous = httpx.get(f"{token_registry.url}/v2/private/tok/manifests/v1")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer realm=")
    with Pusher(token_registry.host, credentials=creds) as client:
        assert client.get_manifest("private/tok", "v1", ACCEPT).headers["docker-content-digest"] == digest
    with Pusher(token_registry.host) as client, pytest.raises(PermissionDenied):
        client.get_manifest("private/tok", "v1", ACCEPT)


def test_pause_layout_pushes_under_its_tag(registry: RegistryServer, tmp_path: Path) -> None:
    layout = build_pause_layout(tmp_path / "pause")
    tag = PAUSE_IMAGE.rsplit(":", 1)[1]
    pushed = push_layout(layout, registry.host, "crishim/pause")
    assert list(pushed) == [tag]
    with Pusher(registry.host) as client:
        got = client.get_manifest("crishim/pause", tag, ACCEPT)
    assert got.headers["docker-content-digest"] == pushed[tag]


def test_critest_images_are_pushed_under_upstream_paths(registry: RegistryServer) -> None:
    script = runpy.run_path(str(ROOT / "scripts" / "build-test-images"))
    pushed = script["push_critest_images"](registry.host, "critest")
    staging = "gcr.io/k8s-staging-cri-tools/"
    assert pushed[staging + "test-image-tags:1"] == f"{registry.host}/critest/k8s-staging-cri-tools/test-image-tags:1"
    with Pusher(registry.host) as client:

        def config_of(ref: str) -> dict[str, object]:
            _, _, rest = ref.partition("/")
            repo, _, tag = rest.rpartition(":")
            doc = json.loads(client.get_manifest(repo, tag, ACCEPT).content)
            if "manifests" in doc:
                amd64 = next(m for m in doc["manifests"] if m["platform"]["architecture"] == "amd64")
                doc = json.loads(client.get_manifest(repo, amd64["digest"], ACCEPT).content)
            return dict(json.loads(client.get_blob(repo, doc["config"]["digest"])))

        tag_ids = {json.dumps(config_of(pushed[f"{staging}test-image-tags:{n}"])) for n in (1, 2, 3)}
        assert len(tag_ids) == 1
        distinct = {json.dumps(config_of(pushed[f"{staging}test-image-{n}:latest"])) for n in (1, 2, 3)}
        assert len(distinct) == 3
        users = {
            "test-image-user-uid": "1002",
            "test-image-user-username": "www-data",
            "test-image-user-uid-group": "1003:1004",
            "test-image-user-username-group": "www-data:1004",
            "test-image-predefined-group": "1000",
        }
        for name, user in users.items():
            config = config_of(pushed[f"{staging}{name}:latest"])["config"]
            assert isinstance(config, dict)
            assert config["User"] == user
        assert pushed["registry.k8s.io/pause:3.9"] == pushed["k8s.gcr.io/pause:3.9"]
