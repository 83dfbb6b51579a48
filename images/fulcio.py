"""Keyless cosign signatures: a Fulcio certificate and a Rekor SET, checked offline.

`cosign sign` without a key gets a short-lived certificate from Fulcio for the signer's
OIDC identity, signs with its key, and logs the signature in Rekor. The signature layer
then carries, beside the signature, the certificate (`dev.sigstore.cosign/certificate`),
its chain (`dev.sigstore.cosign/chain`) and the Rekor bundle (`dev.sigstore.cosign/bundle`):
the log entry and Rekor's signed entry timestamp (SET) over it.

As containers/image does for `sigstoreSigned` with `fulcio`, nothing is fetched: the policy
gives the trusted CA certificates and the Rekor public key, and
1. the SET must be signed by the Rekor key, and its entry must record this very
   certificate, signature and payload hash; its `integratedTime` is then a trusted time;
2. the certificate must have been valid at that time and chain, at that time, to one of the
   policy's CAs, with the code-signing usage;
3. the certificate's OIDC issuer extension and e-mail SAN must be the policy's;
4. then the payload signature is checked with the certificate's key (trust.py).
The certificate expires minutes after signing; the SET time is what makes it usable later.

All cryptography (X.509 path building, ECDSA) is the `cryptography` package's.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
# Fulcio's OIDC issuer: 1.1 holds the raw string (deprecated), 1.8 a DER UTF8String.
OIDC_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
HASHEDREKORD_VERSION = "0.0.1"
MAX_CHAIN_DEPTH = 4


class KeylessRejected(Exception):
    """A keyless signature that does not hold; the message starts with the kind of failure
    (trust.py ranks them) and says why."""


@dataclass(frozen=True, slots=True)
class FulcioRoots:
    """A policy's `fulcio` object: whose certificates to trust and for which identity."""

    ca_pem: bytes
    ca_name: str  # caPath, or "caData", for messages
    oidc_issuer: str
    subject_email: str


@dataclass(frozen=True, slots=True)
class KeylessSigner:
    """What a verified keyless signature tells: the certificate's key and who held it."""

    public_pem: bytes
    email: str
    issuer: str
    integrated_time: int


def load_ca_certificates(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM bundle; ValueError when there is none."""
    certs = x509.load_pem_x509_certificates(pem)
    if not certs:
        raise ValueError("no PEM certificate found")
    return certs


def load_rekor_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """Rekor's public key (ECDSA, as Rekor signs); ValueError for anything else."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"a Rekor key is ECDSA, this is {type(key).__name__}")
    return key


def verify_keyless(
    roots: FulcioRoots,
    rekor_pem: bytes,
    rekor_name: str,
    annotations: Mapping[str, str],
    signature: bytes,
    payload: bytes,
) -> KeylessSigner:
    """Steps 1-3 of the module doc for one signature layer; KeylessRejected otherwise."""
    cert_pem = annotations.get(CERTIFICATE_ANNOTATION, "").encode()
    if not cert_pem:
        raise KeylessRejected(f"no certificate: the signature carries no {CERTIFICATE_ANNOTATION} annotation")
    bundle = annotations.get(BUNDLE_ANNOTATION, "").encode()
    if not bundle:
        raise KeylessRejected(f"no Rekor bundle: the signature carries no {BUNDLE_ANNOTATION} annotation")
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)
        chain = (
            x509.load_pem_x509_certificates(annotations[CHAIN_ANNOTATION].encode())
            if (annotations.get(CHAIN_ANNOTATION))
            else []
        )
    except ValueError as exc:
        raise KeylessRejected(f"untrusted certificate: it cannot be parsed ({exc})") from exc
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    integrated = verify_set(rekor_pem, rekor_name, bundle, leaf_der, signature, payload)
    at = datetime.datetime.fromtimestamp(integrated, datetime.UTC)
    if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
        raise KeylessRejected(
            f"SET time outside the certificate validity: Rekor integrated the signature at {at:%Y-%m-%dT%H:%M:%SZ}, "
            f"the certificate is valid from {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} "
            f"to {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        )
    _verify_chain(roots, leaf, chain, at)
    issuer = _oidc_issuer(leaf)
    if issuer != roots.oidc_issuer:
        raise KeylessRejected(
            f"wrong signer identity: the certificate's OIDC issuer is {issuer!r}, the policy requires "
            f"{roots.oidc_issuer!r}"
        )
    emails = _emails(leaf)
    if roots.subject_email not in emails:
        raise KeylessRejected(
            f"wrong signer identity: the certificate is for {', '.join(emails) or 'no e-mail'}, the policy "
            f"requires {roots.subject_email}"
        )
    public = leaf.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeylessSigner(public_pem=public, email=roots.subject_email, issuer=issuer, integrated_time=integrated)


def _verify_chain(
    roots: FulcioRoots, leaf: x509.Certificate, chain: list[x509.Certificate], at: datetime.datetime
) -> None:
    """Path building and signature checks by cryptography's verifier, at the SET time, with
    the code-signing usage Fulcio sets in place of the web PKI's client-auth one."""
    ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().require_present(
        x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, _code_signing
    )
    # Fulcio's intermediate is restricted to code signing; that restriction must allow it.
    ca_policy = verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, _code_signing
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(load_ca_certificates(roots.ca_pem)))
        .time(at)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, chain)
    except verification.VerificationError as exc:
        raise KeylessRejected(f"untrusted certificate: it does not chain to the CA of {roots.ca_name} ({exc})") from exc


def _code_signing(_policy: Any, cert: x509.Certificate, usage: x509.ExtendedKeyUsage | None) -> None:
    """A leaf must say code signing; a CA may say nothing (no restriction) or include it."""
    if usage is None:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return
        raise ValueError("the certificate is not for code signing")
    if ExtendedKeyUsageOID.CODE_SIGNING not in usage and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usage:
        raise ValueError("the certificate is not for code signing")


def _oidc_issuer(cert: x509.Certificate) -> str:
    """The issuer Fulcio recorded; the V2 extension wins when both are present and agree."""
    found: dict[ObjectIdentifier, str] = {}
    for ext in cert.extensions:
        if ext.oid in (OIDC_ISSUER_V1, OIDC_ISSUER_V2) and isinstance(ext.value, x509.UnrecognizedExtension):
            raw = ext.value.value
            try:
                found[ext.oid] = raw.decode() if ext.oid == OIDC_ISSUER_V1 else _der_utf8(raw)
            except (UnicodeDecodeError, ValueError) as exc:
                raise KeylessRejected(f"untrusted certificate: its OIDC issuer extension is malformed ({exc})") from exc
    if not found:
        raise KeylessRejected("untrusted certificate: it has no Fulcio OIDC issuer extension")
    if len(set(found.values())) > 1:
        raise KeylessRejected("untrusted certificate: its two OIDC issuer extensions disagree")
    return next(iter(found.values()))


def _der_utf8(raw: bytes) -> str:
    """The text of a DER UTF8String (tag 12), the form of Fulcio's V2 extensions."""
    if len(raw) < 2 or raw[0] != 0x0C:
        raise ValueError("not a UTF8String")
    length, start = raw[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or len(raw) < 2 + count:
            raise ValueError("bad DER length")
        length, start = int.from_bytes(raw[2 : 2 + count], "big"), 2 + count
    if len(raw) != start + length:
        raise ValueError("DER length does not match")
    return raw[start:].decode()


def _emails(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.RFC822Name))


def verify_set(
    rekor_pem: bytes, rekor_name: str, bundle: bytes, signer_der: bytes, signature: bytes, payload: bytes
) -> int:
    """The `integratedTime` of a Rekor bundle whose SET verifies with `rekor_pem` and whose
    hashedrekord entry records `signer_der` (a certificate, or a public key's SPKI), this
    signature and this payload's SHA-256; KeylessRejected("bad Rekor SET: ...") otherwise."""

    def bad(reason: str) -> KeylessRejected:
        return KeylessRejected(f"bad Rekor SET: {reason}")

    try:
        document = json.loads(bundle)
        set_signature = base64.b64decode(document["SignedEntryTimestamp"], validate=True)
        entry = document["Payload"]
        body_b64, integrated, log_index, log_id = (
            entry["body"],
            entry["integratedTime"],
            entry["logIndex"],
            entry["logID"],
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise bad(f"the bundle is not a cosign Rekor bundle ({exc!r})") from exc
    if set(document) != {"SignedEntryTimestamp", "Payload"} or set(entry) != {
        "body",
        "integratedTime",
        "logIndex",
        "logID",
    }:
        raise bad("the bundle has missing or unexpected fields")
    if not (_is_int(integrated) and _is_int(log_index) and isinstance(body_b64, str) and isinstance(log_id, str)):
        raise bad("the bundle's entry fields have the wrong types")
    # RFC 8785 canonical form of the entry: keys sorted, no blanks; with only strings and
    # integers, Python's JSON writer produces exactly that.
    canonical = json.dumps(
        {"body": body_b64, "integratedTime": integrated, "logID": log_id, "logIndex": log_index},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    try:
        load_rekor_key(rekor_pem).verify(set_signature, canonical, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise bad(f"the SET is not signed by the Rekor key {rekor_name}") from exc
    try:
        body = json.loads(base64.b64decode(body_b64, validate=True))
        kind, version, spec = body["kind"], body["apiVersion"], body["spec"]
        logged_key = base64.b64decode(spec["signature"]["publicKey"]["content"], validate=True)
        logged_signature = base64.b64decode(spec["signature"]["content"], validate=True)
        algorithm, logged_hash = spec["data"]["hash"]["algorithm"], spec["data"]["hash"]["value"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise bad(f"the log entry is not a hashedrekord ({exc!r})") from exc
    if kind != "hashedrekord" or version != HASHEDREKORD_VERSION:
        raise bad(f"the log entry is {kind!r} {version!r}, not hashedrekord {HASHEDREKORD_VERSION}")
    if _pem_der(logged_key) != signer_der:
        raise bad("the log entry records another certificate or key")
    if logged_signature != signature:
        raise bad("the log entry records another signature")
    if algorithm != "sha256" or logged_hash != hashlib.sha256(payload).hexdigest():
        raise bad("the log entry records another payload")
    return int(integrated)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pem_der(pem: bytes) -> bytes | None:
    """The DER of a PEM certificate, or the SPKI DER of a PEM public key; None for neither."""
    try:
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        pass
    try:
        return serialization.load_pem_public_key(pem).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError):
        return None
