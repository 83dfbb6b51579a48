"""containers-policy.json parsing, scope precedence, signed identities and key checks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from crishim.images.errors import InvalidArgument
from crishim.images.policy import PolicyInvalid, PolicySet, SignedIdentity, parse_policy
from crishim.images.reference import parse_reference
from crishim.images.signatures import parse_payload, signature_valid
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

REQS = {
    "": [{"type": "reject"}],
    "example.com": [{"type": "insecureAcceptAnything"}],
    "example.com/team": [{"type": "reject"}],
    "example.com/team/app": [{"type": "insecureAcceptAnything"}],
    "example.com/team/app:v1": [{"type": "reject"}],
    "*.corp.example": [{"type": "insecureAcceptAnything"}],
}
REMAP = SignedIdentity("remapIdentity", prefix="mirror.io/m", signed_prefix="reg.io/a")


def _policy(docker: Mapping[str, object], default: object = None) -> str:
    return json.dumps({"default": default or [{"type": "reject"}], "transports": {"docker": docker}})


@pytest.mark.parametrize(
    ("ref", "scope"),
    [
        ("example.com/team/app:v1", "docker:example.com/team/app:v1"),
        ("example.com/team/app:v2", "docker:example.com/team/app"),
        ("example.com/team/app@sha256:" + "a" * 64, "docker:example.com/team/app"),
        ("example.com/team/other:v1", "docker:example.com/team"),
        ("example.com/solo:v1", "docker:example.com"),
        ("registry.corp.example/x:1", "docker:*.corp.example"),
        ("quay.io/x:1", "docker"),
    ],
)
def test_the_most_specific_scope_wins(ref: str, scope: str) -> None:
    policy = parse_policy(_policy(REQS), "/p.json")
    assert policy.requirements_for(parse_reference(ref))[0] == scope


def test_default_applies_when_the_transport_names_no_scope() -> None:
    policy = parse_policy(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}), "/p.json")
    scope, reqs = policy.requirements_for(parse_reference("busybox"))
    assert scope == "default"
    assert reqs[0].type == "insecureAcceptAnything"


def test_syntax_error_names_file_and_line() -> None:
    with pytest.raises(PolicyInvalid, match=r"^/etc/x/policy.json:3:\d+: not valid JSON"):
        parse_policy('{\n "default": [\n  {"type": "reject"},,\n ]\n}', "/etc/x/policy.json")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"transports": {}}, "'default' requirements are missing"),
        ({"default": []}, "non-empty list"),
        ({"default": [{"type": "sometimes"}]}, "unknown requirement type 'sometimes'"),
        ({"default": [{"type": "signedBy", "keyType": "GPGKeys"}]}, "signedBy"),
        (
            {"default": [{"type": "sigstoreSigned", "fulcio": {"caPath": "/ca.pem"}}]},
            "keyless sigstoreSigned \\(fulcio\\) needs rekorPublicKeyPath",
        ),
        (
            {"default": [{"type": "sigstoreSigned", "fulcio": {}, "rekorPublicKeyData": "bm90IGEga2V5"}]},
            "not a usable Rekor public key",
        ),
        ({"default": [{"type": "sigstoreSigned"}]}, "exactly one of keyPath"),
        ({"default": [{"type": "sigstoreSigned", "keyPath": "missing.pub"}]}, "cannot read public key"),
        ({"default": [{"type": "sigstoreSigned", "keyData": "bm90IGEga2V5"}]}, "not a usable public key"),
    ],
)
def test_unusable_policies_are_refused_naming_the_file(doc: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyInvalid, match=f"^/nowhere/p.json: .*{message}"):
        parse_policy(json.dumps(doc), "/nowhere/p.json")


def test_key_path_is_relative_to_the_policy_file(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "cosign.pub").write_bytes(pem)
    doc = {"default": [{"type": "sigstoreSigned", "keyPath": "cosign.pub"}]}
    policy = parse_policy(json.dumps(doc), str(tmp_path / "policy.json"))
    assert policy.default[0].keys == (pem,)
    assert policy.default[0].key_names == (str(tmp_path / "cosign.pub"),)


@pytest.mark.parametrize(
    ("identity", "image", "signed", "ok"),
    [
        (SignedIdentity(), "reg.io/a/b:v1", "reg.io/a/b:v1", True),
        (SignedIdentity(), "reg.io/a/b:v1", "reg.io/a/b", False),  # cosign's untagged name
        (SignedIdentity(), "reg.io/a/b@sha256:" + "1" * 64, "reg.io/a/b", True),
        (SignedIdentity(), "reg.io/a/b:v1", "reg.io/a/b:v2", False),
        (SignedIdentity("matchRepository"), "reg.io/a/b:v1", "reg.io/a/b", True),
        (SignedIdentity("matchRepository"), "reg.io/a/b:v1", "reg.io/a/c", False),
        (SignedIdentity("matchExact"), "reg.io/a/b:v1", "reg.io/a/b:v1", True),
        (SignedIdentity("matchExact"), "reg.io/a/b:v1", "reg.io/a/b", False),
        (SignedIdentity("exactRepository", reference="other.io/x"), "reg.io/a/b:v1", "other.io/x", True),
        (SignedIdentity("exactReference", reference="other.io/x:1"), "reg.io/a/b:v1", "other.io/x:1", True),
        (REMAP, "mirror.io/m/b:v1", "reg.io/a/b:v1", True),
        (REMAP, "mirror.io/mm/b:v1", "reg.io/a/b:v1", False),
        (SignedIdentity("matchRepository"), "busybox", "docker.io/library/busybox", True),
        (SignedIdentity("matchRepository"), "reg.io/a/b:v1", "not a reference", False),
    ],
)  # fmt: skip
def test_signed_identity_rules(identity: SignedIdentity, image: str, signed: str, ok: bool) -> None:
    assert identity.matches(parse_reference(image), signed) is ok


def test_namespace_file_replaces_the_node_policy_and_names_are_checked(tmp_path: Path) -> None:
    policies = PolicySet.from_settings(str(tmp_path / "policy.json"), str(tmp_path / "ns"))
    assert policies.for_namespace("prod") is None  # no file at all: accept everything
    (tmp_path / "policy.json").write_text(_policy({}, [{"type": "insecureAcceptAnything"}]))
    (tmp_path / "ns").mkdir()
    (tmp_path / "ns" / "prod.json").write_text(_policy({}))
    found = policies.for_namespace("prod")
    assert found is not None
    assert found.source == str(tmp_path / "ns" / "prod.json")
    node = policies.for_namespace("dev")
    assert node is not None
    assert node.source == str(tmp_path / "policy.json")
    fallback = policies.for_namespace("../ns/prod")
    assert fallback is not None
    assert fallback.source == str(tmp_path / "policy.json")
    assert [p.source for p in policies.load_all()] == [str(tmp_path / "policy.json"), found.source]


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    policies = PolicySet(path, None)
    path.write_text(_policy({}, [{"type": "reject"}]))
    first = policies.for_namespace("")
    assert first is not None
    assert policies.for_namespace("") is first
    path.write_text(_policy({}, [{"type": "insecureAcceptAnything"}]))
    second = policies.for_namespace("")
    assert second is not None
    assert second.default[0].type == "insecureAcceptAnything"
    assert second.revision != first.revision


def _pem(public: object) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


def test_signatures_of_each_key_type_verify_and_others_do_not() -> None:
    data = b'{"critical": {}}'
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    edkey = ed25519.Ed25519PrivateKey.generate()
    signed = {
        _pem(ecdsa.public_key()): ecdsa.sign(data, ec.ECDSA(hashes.SHA256())),
        _pem(rsa_key.public_key()): rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
        _pem(edkey.public_key()): edkey.sign(data),
    }
    for pem, signature in signed.items():
        assert signature_valid(pem, data, signature)
        assert not signature_valid(pem, data + b" ", signature)
    assert not signature_valid(_pem(ecdsa.public_key()), data, edkey.sign(data))


def test_payload_must_be_a_cosign_simple_signing_document() -> None:
    good = {
        "critical": {
            "identity": {"docker-reference": "reg.io/a"},
            "image": {"docker-manifest-digest": "sha256:" + "2" * 64},
            "type": "cosign container image signature",
        }
    }
    claim = parse_payload(json.dumps(good).encode())
    assert claim.docker_reference == "reg.io/a"
    good["critical"]["type"] = "atomic container signature"
    with pytest.raises(InvalidArgument, match="not 'cosign container image signature'"):
        parse_payload(json.dumps(good).encode())
