from __future__ import annotations

import pytest
from crishim.images.errors import InvalidArgument
from crishim.images.reference import looks_like_image_id, parse_reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/foo/bar:1", "docker.io/foo/bar:1"),
        ("quay.io/org/app", "quay.io/org/app:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("127.0.0.1:5000/a/b/c:v1.0-rc", "127.0.0.1:5000/a/b/c:v1.0-rc"),
        (f"app@{DIGEST}", f"docker.io/library/app@{DIGEST}"),
        (f"host:5000/app:tag@{DIGEST}", f"host:5000/app@{DIGEST}"),
    ],
)
def test_references_normalise_like_docker(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


def test_digest_wins_over_tag() -> None:
    ref = parse_reference(f"registry.example.com/app:1.0@{DIGEST}")
    assert ref.object == DIGEST
    assert ref.repo_tag is None
    assert ref.tag == "1.0"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("busy box", "whitespace"),
        ("app:-bad", "tag"),
        ("app@sha256:abc", "sha256"),
        ("app@md5:" + "a" * 32, "algorithm"),
        ("a//b", "repository name"),
        ("app:", "tag"),
        ("sha256:" + "b" * 64, "image ID"),
        ("a" * 256, "longer"),
    ],
)
def test_malformed_references_say_why(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        parse_reference(text)


def test_image_ids_are_recognised() -> None:
    assert looks_like_image_id("sha256:" + "c" * 64)
    assert looks_like_image_id("c" * 64)
    assert not looks_like_image_id("busybox")
