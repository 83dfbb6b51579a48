"""Cosign signatures: where the registry keeps them, and checking one against a public key.

cosign stores the signatures of `repo@sha256:<hex>` as the manifest tagged `sha256-<hex>.sig`
in the same repository; each of its layers is a simple-signing payload
(`application/vnd.dev.cosign.simplesigning.v1+json`) whose signature, base64, is the layer's
`dev.cosignproject.cosign/signature` annotation. With OCI 1.1 referrers a signature is an
artifact whose `subject` is the image: found through `/v2/<name>/referrers/<digest>`, or,
on registries without that API, the index tagged `sha256-<hex>` (the referrers tag schema).

A keyless signature (fulcio.py) also carries its Fulcio certificate, chain and Rekor bundle
as annotations of the same layer; they are kept with the signature.

The payload says which manifest digest and which repository it vouches for; both are
checked only after its signature verifies. The cryptography comes from the `cryptography`
package: ECDSA (P-256/SHA-256 as `cosign generate-key-pair` makes; P-384 and P-521 with
SHA-256 as cosign signs, or with their matching hash), RSA
PKCS#1 v1.5 with SHA-256, and Ed25519.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgument, NotFound
from .reference import Reference

if TYPE_CHECKING:
    from .registry import RegistryClient, _Session

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
PAYLOAD_TYPE = "cosign container image signature"
MAX_SIGNATURES = 16  # per image: a registry cannot make a pull check thousands
MAX_PAYLOAD_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class CosignSignature:
    """One signature: the payload bytes that were signed, and the raw signature over them."""

    payload: bytes
    signature: bytes
    found_in: str  # "sha256-<hex>.sig tag", "referrers API" or "referrers tag"
    # The layer's annotations: a keyless signature's certificate, chain and Rekor bundle.
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SignedClaim:
    """What a verified payload vouches for."""

    manifest_digest: str
    docker_reference: str


def load_public_key(pem: bytes) -> Any:
    """The key of a PEM `PUBLIC KEY` block (cosign.pub); ValueError when it is none we use."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise ValueError(f"unsupported key type {type(key).__name__} (use ECDSA, RSA or Ed25519)")
    return key


def signature_valid(pem: bytes, payload: bytes, signature: bytes) -> bool:
    """Whether `signature` over `payload` was made with the private half of `pem`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    key = load_public_key(pem)
    if isinstance(key, ec.EllipticCurvePublicKey):
        # cosign and containers/image hash with SHA-256 whatever the curve (a P-384 Fulcio
        # certificate's signature included); some signers match the hash to the curve.
        digests: list[hashes.HashAlgorithm] = [hashes.SHA256()]
        if key.curve.key_size > 256:
            digests.append(hashes.SHA384() if key.curve.key_size == 384 else hashes.SHA512())
        return any(_ecdsa_valid(key, payload, signature, digest) for digest in digests)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def _ecdsa_valid(key: Any, payload: bytes, signature: bytes, digest: Any) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key.verify(signature, payload, ec.ECDSA(digest))
    except InvalidSignature:
        return False
    return True


def parse_payload(payload: bytes) -> SignedClaim:
    """The claim of a simple-signing payload; InvalidArgument when it is not one."""
    try:
        data = json.loads(payload)
        critical = data["critical"]
        kind = critical["type"]
        digest = critical["image"]["docker-manifest-digest"]
        reference = critical["identity"]["docker-reference"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"the signature payload is not a simple-signing document ({exc!r})") from exc
    if kind != PAYLOAD_TYPE or not isinstance(digest, str) or not isinstance(reference, str):
        raise InvalidArgument(f"the signature payload has type {kind!r}, not {PAYLOAD_TYPE!r}")
    return SignedClaim(manifest_digest=digest, docker_reference=reference)


def signature_tag(digest: str) -> str:
    """cosign's tag for the signatures of `digest`: sha256:<hex> -> sha256-<hex>.sig."""
    return digest.replace(":", "-", 1) + ".sig"


async def find_signatures(
    registry: RegistryClient, session: _Session, ref: Reference, digest: str
) -> list[CosignSignature]:
    """Every cosign signature stored for `digest`: the `.sig` tag first (one manifest and one
    blob fetch for a singly-signed image), then OCI 1.1 referrers."""
    try:
        raw = await registry.fetch_manifest(session, ref, signature_tag(digest))
    except NotFound:
        raw = None
    if raw is not None:
        found = await _from_manifest(registry, session, raw, f"{signature_tag(digest)} tag")
        if found:
            return found
    return await _from_referrers(registry, session, ref, digest)


async def _from_referrers(
    registry: RegistryClient, session: _Session, ref: Reference, digest: str
) -> list[CosignSignature]:
    where = "referrers API"
    try:
        index = await registry.fetch_referrers(session, digest)
    except (NotFound, InvalidArgument):
        # No referrers API (404, or 400 from registries that route it nowhere): the tag schema.
        where = "referrers tag"
        try:
            index = await registry.fetch_manifest(session, ref, digest.replace(":", "-", 1))
        except NotFound:
            return []
    found: list[CosignSignature] = []
    for entry in _json(index).get("manifests") or []:
        if not isinstance(entry, dict) or entry.get("artifactType") != COSIGN_SIG_ARTIFACT:
            continue
        member = entry.get("digest")
        if not isinstance(member, str) or len(found) >= MAX_SIGNATURES:
            continue
        raw = await registry.fetch_manifest(session, ref, member)
        found += await _from_manifest(registry, session, raw, where)
    return found


async def _from_manifest(registry: RegistryClient, session: _Session, raw: bytes, where: str) -> list[CosignSignature]:
    found: list[CosignSignature] = []
    for layer in (_json(raw).get("layers") or [])[:MAX_SIGNATURES]:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
            continue
        annotations = layer.get("annotations")
        if not isinstance(annotations, dict):
            continue
        encoded = annotations.get(SIGNATURE_ANNOTATION)
        digest = layer.get("digest")
        if not isinstance(encoded, str) or not isinstance(digest, str):
            continue
        try:
            signature = base64.b64decode(encoded, validate=True)
        except ValueError:
            continue
        payload = await registry.fetch_blob(session, digest, MAX_PAYLOAD_BYTES)
        texts = {k: v for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str)}
        found.append(CosignSignature(payload=payload, signature=signature, found_in=where, annotations=texts))
    return found


def _json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
