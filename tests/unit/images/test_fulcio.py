"""Keyless signature checks (fulcio.py) and keyless policy parsing, with a CA and Rekor key
made in the test: each check on its own, without a registry."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from crishim.images import fulcio
from crishim.images.policy import PolicyInvalid, parse_policy
from crishim.images.signatures import signature_valid
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import cosign, sigstore

PAYLOAD = cosign.payload("reg.example/app", "sha256:" + "a" * 64)
CA = sigstore.FulcioCA.generate()  # a CA costs two key generations: one for the module
REKOR = sigstore.RekorKey.generate()
ROOTS = fulcio.FulcioRoots(CA.root_pem, "ca.pem", sigstore.ISSUER, sigstore.EMAIL)


def signed(cert: sigstore.Certificate | None = None) -> tuple[dict[str, str], bytes]:
    """The annotations of a keyless signature of PAYLOAD by `cert`, and the signature."""
    cert = cert or CA.issue()
    signature = cert.sign(PAYLOAD)
    annotations = {
        fulcio.CERTIFICATE_ANNOTATION: cert.pem.decode(),
        fulcio.CHAIN_ANNOTATION: CA.chain_pem.decode(),
        fulcio.BUNDLE_ANNOTATION: REKOR.bundle(cert.pem, signature, PAYLOAD, datetime.datetime.now(datetime.UTC)),
    }
    return annotations, signature


def verify(annotations: dict[str, str], signature: bytes, roots: fulcio.FulcioRoots = ROOTS) -> fulcio.KeylessSigner:
    return fulcio.verify_keyless(roots, REKOR.public_pem, "rekor.pub", annotations, signature, PAYLOAD)


def with_bundle(annotations: dict[str, str], change: Any) -> dict[str, str]:
    """The annotations with the bundle's JSON document passed through `change`."""
    document = json.loads(annotations[fulcio.BUNDLE_ANNOTATION])
    change(document)
    return {**annotations, fulcio.BUNDLE_ANNOTATION: json.dumps(document)}


def test_a_valid_signature_gives_the_certificate_key_and_identity() -> None:
    annotations, signature = signed()
    signer = verify(annotations, signature)
    assert (signer.email, signer.issuer) == (sigstore.EMAIL, sigstore.ISSUER)
    assert signature_valid(signer.public_pem, PAYLOAD, signature)
    bundle = json.loads(annotations[fulcio.BUNDLE_ANNOTATION])
    assert signer.integrated_time == bundle["Payload"]["integratedTime"]


def test_older_certificates_with_only_the_v1_issuer_extension_are_read() -> None:
    annotations, signature = signed(CA.issue(issuer_v2=False))
    assert verify(annotations, signature).issuer == sigstore.ISSUER


def test_a_p384_certificate_signing_with_sha256_as_cosign_does_verifies() -> None:
    cert = CA.issue(curve=ec.SECP384R1())
    annotations, signature = signed(cert)
    signer = verify(annotations, signature)
    assert signature_valid(signer.public_pem, PAYLOAD, signature)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d["Payload"].update(logIndex=d["Payload"]["logIndex"] + 1), "not signed by the Rekor key"),
        (lambda d: d["Payload"].update(extra=1), "missing or unexpected fields"),
        (lambda d: d["Payload"].update(integratedTime="1700000000"), "wrong types"),
        (lambda d: d.update(SignedEntryTimestamp="not base64!"), "not a cosign Rekor bundle"),
        (lambda d: d.pop("Payload"), "not a cosign Rekor bundle"),
    ],
)
def test_a_bundle_that_was_altered_or_is_malformed_is_a_bad_set(change: Any, reason: str) -> None:
    annotations, signature = signed()
    with pytest.raises(fulcio.KeylessRejected, match=f"^bad Rekor SET: .*{reason}"):
        verify(with_bundle(annotations, change), signature)


def test_a_set_for_another_certificate_is_refused() -> None:
    annotations, signature = signed()
    other, _ = signed()
    mixed = {**annotations, fulcio.CERTIFICATE_ANNOTATION: other[fulcio.CERTIFICATE_ANNOTATION]}
    with pytest.raises(fulcio.KeylessRejected, match="records another certificate or key"):
        verify(mixed, signature)


def test_a_certificate_without_code_signing_is_untrusted() -> None:
    annotations, signature = signed(CA.issue(code_signing=False))
    with pytest.raises(fulcio.KeylessRejected, match="^untrusted certificate: .*not for code signing"):
        verify(annotations, signature)


def test_missing_certificate_or_bundle_is_named() -> None:
    annotations, signature = signed()
    with pytest.raises(fulcio.KeylessRejected, match="^no certificate"):
        verify({k: v for k, v in annotations.items() if k != fulcio.CERTIFICATE_ANNOTATION}, signature)
    with pytest.raises(fulcio.KeylessRejected, match="^no Rekor bundle"):
        verify({k: v for k, v in annotations.items() if k != fulcio.BUNDLE_ANNOTATION}, signature)


# ---- the policy file -------------------------------------------------------------------------


def keyless(**fields: Any) -> str:
    requirement = {
        "type": "sigstoreSigned",
        "fulcio": {
            "caData": base64.b64encode(CA.root_pem).decode(),
            "oidcIssuer": sigstore.ISSUER,
            "subjectEmail": sigstore.EMAIL,
        },
        "rekorPublicKeyData": base64.b64encode(REKOR.public_pem).decode(),
        **fields,
    }
    return json.dumps({"default": [requirement]})


def test_a_keyless_requirement_is_parsed_with_its_roots(tmp_path: Path) -> None:
    requirement = parse_policy(keyless(), str(tmp_path / "policy.json")).default[0]
    assert requirement.fulcio == fulcio.FulcioRoots(CA.root_pem, "caData", sigstore.ISSUER, sigstore.EMAIL)
    assert (requirement.rekor_key, requirement.rekor_name) == (REKOR.public_pem, "rekorPublicKeyData")
    assert requirement.keys == ()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fulcio": {"caData": "", "oidcIssuer": "i", "subjectEmail": "e"}}, "needs caPath or caData"),
        ({"fulcio": {"caPath": "missing.pem", "oidcIssuer": "i", "subjectEmail": "e"}}, "cannot read caPath"),
        ({"fulcio": {"caData": "bm90IGEgY2E=", "oidcIssuer": "i", "subjectEmail": "e"}}, "not usable CA certificates"),
        ({"fulcio": {"caData": base64.b64encode(CA.root_pem).decode(), "oidcIssuer": "i"}}, "subjectEmail must be"),
        ({"fulcio": {"caPath": "a", "caData": "b"}}, "caPath or caData, not both"),
        ({"fulcio": {"subjectEmails": []}}, "unknown field"),
        ({"rekorPublicKeyData": None}, "rekorPublicKeyData must be base64"),
        ({"keyData": "eA=="}, "either keys or fulcio"),
    ],
)
def test_unusable_keyless_requirements_are_refused_naming_the_file(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyInvalid, match=f"^/nowhere/p.json: .*{message}"):
        parse_policy(keyless(**fields), "/nowhere/p.json")


def test_a_rekor_key_must_be_ecdsa() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(PolicyInvalid, match="not a usable Rekor public key: a Rekor key is ECDSA"):
        parse_policy(keyless(rekorPublicKeyData=base64.b64encode(pem).decode()), "/nowhere/p.json")


def test_keyless_needs_a_rekor_key() -> None:
    document = json.loads(keyless())
    del document["default"][0]["rekorPublicKeyData"]
    with pytest.raises(PolicyInvalid, match="needs rekorPublicKeyPath or rekorPublicKeyData"):
        parse_policy(json.dumps(document), "/nowhere/p.json")
