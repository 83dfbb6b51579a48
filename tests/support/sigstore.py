"""A Fulcio-like CA and a Rekor-like log key, made in tests, for keyless cosign signatures.

What `cosign sign` without a key leaves in the registry, built with the `cryptography`
package and no network: a short-lived leaf certificate for an e-mail identity, carrying
Fulcio's OIDC issuer extensions and issued through an intermediate by a root the policy
trusts; the payload signed with the leaf's key; and a Rekor bundle whose signed entry
timestamp (SET) over a hashedrekord entry is made with the log's ECDSA key.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

OIDC_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
ISSUER = "https://accounts.example.test"
EMAIL = "builder@example.test"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _utf8string(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 128
    return bytes([0x0C, len(raw)]) + raw


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _ca_cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test"), x509.NameAttribute(NameOID.COMMON_NAME, subject)]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(days=1))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(ski, critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(signer, hashes.SHA384())


@dataclass(frozen=True)
class Certificate:
    """A leaf certificate and its private key: what Fulcio hands cosign for one signing."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return _pem(self.cert)

    def sign(self, payload: bytes) -> bytes:
        """SHA-256 whatever the curve, as cosign signs."""
        return self.key.sign(payload, ec.ECDSA(hashes.SHA256()))


@dataclass(frozen=True)
class FulcioCA:
    """A root and an intermediate, as Fulcio's public instance has."""

    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> FulcioCA:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root = _ca_cert("test-fulcio-root", root_key, None, root_key)
        inter_key = ec.generate_private_key(ec.SECP384R1())
        return cls(root, _ca_cert("test-fulcio-intermediate", inter_key, root, root_key), inter_key)

    @property
    def root_pem(self) -> bytes:
        return _pem(self.root)

    @property
    def chain_pem(self) -> bytes:
        """The `dev.sigstore.cosign/chain` annotation: the intermediate, then the root."""
        return _pem(self.intermediate) + _pem(self.root)

    def issue(
        self,
        email: str = EMAIL,
        issuer: str = ISSUER,
        *,
        not_before: datetime.datetime | None = None,
        lifetime: datetime.timedelta = datetime.timedelta(minutes=10),
        curve: ec.EllipticCurve | None = None,
        issuer_v2: bool = True,
        code_signing: bool = True,
    ) -> Certificate:
        """A Fulcio-style leaf: no subject, the e-mail as a critical SAN, code signing, and the
        OIDC issuer in the V1 (raw) and, unless `issuer_v2` is false as in older Fulcio
        certificates, the V2 (DER UTF8String) extension."""
        key = ec.generate_private_key(curve or ec.SECP256R1())
        usage = ExtendedKeyUsageOID.CODE_SIGNING if code_signing else ExtendedKeyUsageOID.CLIENT_AUTH
        start = not_before or _now() - datetime.timedelta(minutes=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.intermediate_key.public_key()), critical=False
            )
            .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_V1, issuer.encode()), critical=False)
        )
        if issuer_v2:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(OIDC_ISSUER_V2, _utf8string(issuer)), critical=False
            )
        return Certificate(builder.sign(self.intermediate_key, hashes.SHA384()), key)


@dataclass(frozen=True)
class RekorKey:
    """The log's key: signs the SET over each entry it integrates."""

    private: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> RekorKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def bundle(self, signer_pem: bytes, signature: bytes, payload: bytes, integrated: datetime.datetime) -> str:
        """The `dev.sigstore.cosign/bundle` annotation for a hashedrekord entry of this
        signature by `signer_pem` (certificate or public key), integrated at `integrated`."""
        body = {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}},
                "signature": {
                    "content": base64.b64encode(signature).decode(),
                    "publicKey": {"content": base64.b64encode(signer_pem).decode()},
                },
            },
        }
        entry = {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "integratedTime": int(integrated.timestamp()),
            "logIndex": 4242,
            "logID": hashlib.sha256(self.public_pem).hexdigest(),
        }
        # The SET signs the entry's RFC 8785 canonical form: sorted keys, no blanks.
        canonical = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        signed = self.private.sign(canonical, ec.ECDSA(hashes.SHA256()))
        return json.dumps({"SignedEntryTimestamp": base64.b64encode(signed).decode(), "Payload": entry})
