"""Cosign-format signatures made in tests: a key pair, a simple-signing payload, and its push.

What `cosign sign --key` stores, made with the `cryptography` package so no cosign binary
is needed: the payload blob, a manifest whose layer carries the base64 signature in the
`dev.cosignproject.cosign/signature` annotation, tagged `sha256-<hex>.sig`; or, OCI 1.1
style, an artifact manifest with a `subject`, listed in the referrers tag `sha256-<hex>`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.push import Pusher

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


class Signer(Protocol):
    """A cosign key pair, or a keyless signing certificate's key."""

    def sign(self, payload: bytes) -> bytes: ...


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SigningKey:
    """A P-256 key pair as `cosign generate-key-pair` makes (the private half stays in memory)."""

    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, payload: bytes) -> bytes:
        return self.private.sign(payload, ec.ECDSA(hashes.SHA256()))


def payload(docker_reference: str, manifest_digest: str) -> bytes:
    """cosign's simple-signing payload: the repository (no tag, as cosign writes it) and digest."""
    document = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _signature_manifest(
    pusher: Pusher,
    repository: str,
    body: bytes,
    key: Signer,
    annotations: Mapping[str, str] | None = None,
    signature: bytes | None = None,
    **extra: object,
) -> bytes:
    pusher.push_blob(repository, _digest(body), body)
    config = extra.pop("config", None)
    if not isinstance(config, bytes):
        config = json.dumps({"architecture": "", "os": "", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_type = str(extra.pop("config_type", OCI_CONFIG))
    pusher.push_blob(repository, _digest(config), config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        **extra,
        "config": {"mediaType": config_type, "digest": _digest(config), "size": len(config)},
        "layers": [
            {
                "mediaType": SIMPLE_SIGNING,
                "digest": _digest(body),
                "size": len(body),
                "annotations": {
                    SIGNATURE_ANNOTATION: base64.b64encode(signature or key.sign(body)).decode(),
                    **(annotations or {}),
                },
            }
        ],
    }
    return json.dumps(manifest).encode()


def push_sig_tag(
    pusher: Pusher,
    repository: str,
    image_digest: str,
    key: Signer,
    body: bytes,
    annotations: Mapping[str, str] | None = None,
    signature: bytes | None = None,
) -> None:
    """Stores `body` signed by `key` (or the given `signature` of it) as the signature of
    `image_digest` under the `.sig` tag; `annotations` adds a keyless signature's
    certificate, chain and Rekor bundle to the layer."""
    manifest = _signature_manifest(pusher, repository, body, key, annotations, signature)
    pusher.push_manifest(repository, image_digest.replace(":", "-", 1) + ".sig", manifest, OCI_MANIFEST)


def push_referrer(pusher: Pusher, repository: str, image: tuple[str, int, str], key: SigningKey, body: bytes) -> None:
    """Stores the signature as an OCI 1.1 artifact whose subject is `image` (digest, size, media
    type), and lists it in the referrers tag schema's index `sha256-<hex>`."""
    digest, size, media_type = image
    manifest = _signature_manifest(
        pusher,
        repository,
        body,
        key,
        artifactType=COSIGN_SIG_ARTIFACT,
        subject={"mediaType": media_type, "digest": digest, "size": size},
        config=b"{}",
        config_type=OCI_EMPTY,
    )
    manifest_digest = pusher.push_manifest(repository, _digest(manifest), manifest, OCI_MANIFEST)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest or _digest(manifest),
                "size": len(manifest),
                "artifactType": COSIGN_SIG_ARTIFACT,
            }
        ],
    }
    pusher.push_manifest(repository, digest.replace(":", "-", 1), json.dumps(index).encode(), OCI_INDEX)
