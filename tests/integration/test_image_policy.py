"""Signature policies against a real docker-registry: cosign-format signatures made here.

Each test pushes its own small image (so no verdict or layer is shared between tests),
signs it with a key generated in the test, and pulls it through a real ImageStore, or,
for the CRI code, the namespace and the start-up refusal, through a live daemon.
"""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.images import build as b
from crishim.images.policy import PolicyRejected, PolicySet
from crishim.images.store import ImageStore
from crishim.images.trust import Verdict

from tests.support import cosign, sigstore
from tests.support.daemon import Daemon, running_daemon, write_config
from tests.support.push import Pusher
from tests.support.registry import RegistryServer

pytest_plugins = ["tests.support.registry"]

pytestmark = pytest.mark.root


class Registry:
    """Pushes fresh one-layer images and their signatures to the test registry."""

    def __init__(self, server: RegistryServer) -> None:
        self.host = server.host
        self.pusher = Pusher(server.host)

    def image(self, repo: str, tag: str = "v1") -> tuple[str, b.BuiltImage]:
        """A new image (its own bytes) pushed as `repo:tag`; returns the repository name and it."""
        built = b.build_image([b.build_layer([b.regular("id", uuid.uuid4().hex.encode())])], b.ImageConfig(cmd=("sh",)))
        self.pusher.push(f"policy/{repo}", built, [tag])
        return f"{self.host}/policy/{repo}", built

    def sign(self, name: str, digest: str, key: cosign.SigningKey, *, claims: tuple[str, str] | None = None) -> None:
        """A `.sig` tag signature of `digest`; `claims` = (docker-reference, digest) to forge."""
        reference, claimed = claims or (name, digest)
        cosign.push_sig_tag(self.pusher, name.split("/", 1)[1], digest, key, cosign.payload(reference, claimed))


@pytest.fixture(scope="module")
def reg(registry: RegistryServer) -> Iterator[Registry]:
    r = Registry(registry)
    yield r
    r.pusher.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ImageStore]:
    s = ImageStore(tmp_path / "images", None, policies=PolicySet(tmp_path / "policy.json", tmp_path / "policies"))
    yield s
    await s.aclose()


def signed_by(key: cosign.SigningKey, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"type": "sigstoreSigned", "keyData": base64.b64encode(key.public_pem).decode()}
    if identity is not None:
        req["signedIdentity"] = identity
    return req


def write_policy(path: Path, default: list[dict[str, Any]], docker: dict[str, Any] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"default": default, "transports": {"docker": docker or {}}}, indent=2))


def assert_store_empty(store: ImageStore) -> None:
    assert store.list(None) == []
    assert not any((store.root / "blobs").rglob("sha256/*"))
    assert not any(store.layers_dir.iterdir())


REPO_MATCH = {"type": "matchRepository"}


async def test_signed_image_is_verified_by_tag_and_by_digest_and_cached(
    store: ImageStore, reg: Registry, tmp_path: Path
) -> None:
    key = cosign.SigningKey.generate()
    name, built = reg.image("signed")
    reg.sign(name, built.digest, key)
    write_policy(tmp_path / "policy.json", [{"type": "reject"}], {name: [signed_by(key, REPO_MATCH)]})
    verdicts: list[Verdict] = []
    record = await store.pull(f"{name}:v1", on_verdict=verdicts.append)
    assert record.id == built.config_digest
    assert verdicts[0].outcome == "verified"
    assert verdicts[0].scope == f"docker:{name}"
    assert "sig tag" in verdicts[0].detail
    await store.pull(f"{name}@{built.digest}", on_verdict=verdicts.append)
    assert [v.outcome for v in verdicts] == ["verified", "verified"]
    await store.pull(f"{name}:v1", on_verdict=verdicts.append)  # the cached verdict
    assert store.verdict_counts == {"verified": 3}
    assert [v.cached for v in verdicts] == [False, False, True]
    assert verdicts[0].seconds > 0
    assert str(verdicts[2]).endswith("; from the cache)")


@pytest.mark.parametrize("case", ["unsigned", "wrong key", "digest mismatch", "identity mismatch"])
async def test_bad_or_missing_signature_is_rejected_before_any_layer(
    store: ImageStore, reg: Registry, tmp_path: Path, case: str
) -> None:
    key = cosign.SigningKey.generate()
    name, built = reg.image(f"bad-{case.replace(' ', '-')}")
    other_name, other = reg.image("other")
    if case == "wrong key":
        reg.sign(name, built.digest, cosign.SigningKey.generate())
    elif case == "digest mismatch":  # a genuine signature of another image, copied to this one's tag
        reg.sign(name, built.digest, key, claims=(name, other.digest))
    elif case == "identity mismatch":
        reg.sign(name, built.digest, key, claims=(other_name, built.digest))
    write_policy(tmp_path / "policy.json", [signed_by(key, REPO_MATCH)])
    with pytest.raises(PolicyRejected) as caught:
        await store.pull(f"{name}:v1")
    message = str(caught.value)
    assert "scope default" in message
    assert str(tmp_path / "policy.json") in message
    assert ("no signature" if case == "unsigned" else case) in message
    assert_store_empty(store)
    assert store.verdict_counts == {"rejected": 1}


async def test_referrers_tag_schema_signature_is_found(store: ImageStore, reg: Registry, tmp_path: Path) -> None:
    key = cosign.SigningKey.generate()
    name, built = reg.image("referred")
    body = cosign.payload(name, built.digest)
    subject = (built.digest, len(built.manifest), built.media_type)
    cosign.push_referrer(reg.pusher, name.split("/", 1)[1], subject, key, body)
    write_policy(tmp_path / "policy.json", [signed_by(key, REPO_MATCH)])
    verdicts: list[Verdict] = []
    await store.pull(f"{name}:v1", on_verdict=verdicts.append)
    assert verdicts[0].outcome == "verified"
    assert "referrers tag" in verdicts[0].detail


async def test_default_identity_accepts_cosign_names_only_for_digest_pulls(
    store: ImageStore, reg: Registry, tmp_path: Path
) -> None:
    """matchRepoDigestOrExact (the default): cosign signs the repository without a tag, which
    vouches for a pull by digest but not for one by tag, as in containers/image."""
    key = cosign.SigningKey.generate()
    name, built = reg.image("default-identity")
    reg.sign(name, built.digest, key)
    write_policy(tmp_path / "policy.json", [signed_by(key)])
    with pytest.raises(PolicyRejected, match="identity mismatch"):
        await store.pull(f"{name}:v1")
    record = await store.pull(f"{name}@{built.digest}")
    assert record.id == built.config_digest


async def test_scopes_reject_and_accept_anything(store: ImageStore, reg: Registry, tmp_path: Path) -> None:
    open_name, open_image = reg.image("open")
    closed_name, _ = reg.image("closed")
    write_policy(
        tmp_path / "policy.json",
        [{"type": "insecureAcceptAnything"}],
        {reg.host: [{"type": "reject"}], open_name: [{"type": "insecureAcceptAnything"}]},
    )
    verdicts: list[Verdict] = []
    assert (await store.pull(f"{open_name}:v1", on_verdict=verdicts.append)).id == open_image.config_digest
    assert verdicts[0].outcome == "unsigned"
    assert verdicts[0].scope == f"docker:{open_name}"
    with pytest.raises(PolicyRejected, match=f"scope docker:{reg.host}\\).*rejects every image"):
        await store.pull(f"{closed_name}:v1")


async def test_namespace_policy_replaces_the_node_policy(store: ImageStore, reg: Registry, tmp_path: Path) -> None:
    key = cosign.SigningKey.generate()
    name, built = reg.image("per-namespace")
    write_policy(tmp_path / "policy.json", [{"type": "insecureAcceptAnything"}])
    write_policy(tmp_path / "policies" / "secure.json", [signed_by(key, REPO_MATCH)])
    with pytest.raises(PolicyRejected, match="secure.json.*no signature"):
        await store.pull(f"{name}:v1", namespace="secure")
    assert (await store.pull(f"{name}:v1", namespace="relaxed")).id == built.config_digest
    reg.sign(name, built.digest, key)
    assert (await store.pull(f"{name}:v1", namespace="secure")).id == built.config_digest


# ---- keyless: a Fulcio certificate and a Rekor SET, checked offline --------------------------


def keyless_policy(tmp_path: Path, ca: sigstore.FulcioCA, rekor: sigstore.RekorKey, **fulcio: str) -> dict[str, Any]:
    """A keyless requirement with its roots in files beside the policy (caPath and
    rekorPublicKeyPath are relative to it); `fulcio` overrides oidcIssuer / subjectEmail."""
    (tmp_path / "fulcio-root.pem").write_bytes(ca.root_pem)
    (tmp_path / "rekor.pub").write_bytes(rekor.public_pem)
    roots = {"caPath": "fulcio-root.pem", "oidcIssuer": sigstore.ISSUER, "subjectEmail": sigstore.EMAIL, **fulcio}
    return {"type": "sigstoreSigned", "fulcio": roots, "rekorPublicKeyPath": "rekor.pub", "signedIdentity": REPO_MATCH}


def sign_keyless(
    reg: Registry,
    name: str,
    digest: str,
    ca: sigstore.FulcioCA,
    rekor: sigstore.RekorKey,
    *,
    cert: sigstore.Certificate | None = None,
    integrated: datetime.datetime | None = None,
) -> None:
    """What `cosign sign` without a key pushes: the payload signed with a fresh Fulcio
    certificate's key, the certificate, its chain and the Rekor bundle, as the `.sig` tag."""
    cert = cert or ca.issue()
    body = cosign.payload(name, digest)
    signature = cert.sign(body)
    when = integrated or datetime.datetime.now(datetime.UTC)
    annotations = {
        "dev.sigstore.cosign/certificate": cert.pem.decode(),
        "dev.sigstore.cosign/chain": ca.chain_pem.decode(),
        "dev.sigstore.cosign/bundle": rekor.bundle(cert.pem, signature, body, when),
    }
    cosign.push_sig_tag(reg.pusher, name.split("/", 1)[1], digest, cert, body, annotations, signature)


async def test_keyless_signature_is_verified_offline(store: ImageStore, reg: Registry, tmp_path: Path) -> None:
    ca, rekor = sigstore.FulcioCA.generate(), sigstore.RekorKey.generate()
    name, built = reg.image("keyless")
    sign_keyless(reg, name, built.digest, ca, rekor)
    write_policy(tmp_path / "policy.json", [{"type": "reject"}], {name: [keyless_policy(tmp_path, ca, rekor)]})
    verdicts: list[Verdict] = []
    record = await store.pull(f"{name}:v1", on_verdict=verdicts.append)
    assert record.id == built.config_digest
    assert verdicts[0].outcome == "verified"
    assert verdicts[0].scope == f"docker:{name}"
    assert f"keyless signature ({built.digest.replace(':', '-')}.sig tag) by {sigstore.EMAIL}" in verdicts[0].detail
    assert f"certificate from {tmp_path / 'fulcio-root.pem'}" in verdicts[0].detail


KEYLESS_CASES = {
    "wrong CA": "untrusted certificate: it does not chain to the CA of",
    "wrong email": f"wrong signer identity: the certificate is for {sigstore.EMAIL}, the policy requires ops@",
    "wrong issuer": "wrong signer identity: the certificate's OIDC issuer is",
    "bad SET": "bad Rekor SET: the SET is not signed by the Rekor key",
    "SET time outside the certificate validity": "SET time outside the certificate validity: Rekor integrated",
    "tampered payload": "bad Rekor SET: the log entry records another payload",
}


@pytest.mark.parametrize("case", list(KEYLESS_CASES))
async def test_keyless_signature_failures_are_rejected_before_any_layer(
    store: ImageStore, reg: Registry, tmp_path: Path, case: str
) -> None:
    ca, rekor = sigstore.FulcioCA.generate(), sigstore.RekorKey.generate()
    name, built = reg.image(f"keyless-{case.split()[0].lower()}-{case.split()[1].lower()}")
    policy_ca, policy_rekor, roots = ca, rekor, {}
    if case == "wrong CA":  # a certificate from a CA the policy does not trust
        policy_ca = sigstore.FulcioCA.generate()
    elif case == "wrong email":
        roots = {"subjectEmail": "ops@example.test"}
    elif case == "wrong issuer":
        roots = {"oidcIssuer": "https://token.actions.example.test"}
    elif case == "bad SET":  # a SET made by a log the policy does not trust
        policy_rekor = sigstore.RekorKey.generate()
    if case.startswith("SET time"):  # logged an hour after the ten-minute certificate expired
        issued = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
        sign_keyless(
            reg,
            name,
            built.digest,
            ca,
            rekor,
            cert=ca.issue(not_before=issued),
            integrated=issued + datetime.timedelta(hours=1),
        )
    elif case == "tampered payload":  # a genuine keyless signature of another image moved to this one
        cert = ca.issue()
        other = cosign.payload(name, "sha256:" + "0" * 64)
        signature = cert.sign(other)
        bundle = rekor.bundle(cert.pem, signature, other, datetime.datetime.now(datetime.UTC))
        body = cosign.payload(name, built.digest)
        annotations = {
            "dev.sigstore.cosign/certificate": cert.pem.decode(),
            "dev.sigstore.cosign/chain": ca.chain_pem.decode(),
            "dev.sigstore.cosign/bundle": bundle,
        }
        cosign.push_sig_tag(reg.pusher, name.split("/", 1)[1], built.digest, cert, body, annotations, signature)
    else:
        sign_keyless(reg, name, built.digest, ca, rekor)
    write_policy(tmp_path / "policy.json", [keyless_policy(tmp_path, policy_ca, policy_rekor, **roots)])
    with pytest.raises(PolicyRejected) as caught:
        await store.pull(f"{name}:v1")
    message = str(caught.value)
    assert f"rejected by policy {tmp_path / 'policy.json'} (scope default)" in message
    assert KEYLESS_CASES[case] in message
    assert_store_empty(store)
    assert store.verdict_counts == {"rejected": 1}


async def test_keyless_and_key_pair_requirements_each_need_their_own_signature(
    store: ImageStore, reg: Registry, tmp_path: Path
) -> None:
    """Every requirement of the scope must hold: a keyless signature does not satisfy a key
    pair requirement, and a key pair signature carries no certificate for a keyless one."""
    ca, rekor, key = sigstore.FulcioCA.generate(), sigstore.RekorKey.generate(), cosign.SigningKey.generate()
    name, built = reg.image("keyless-and-key")
    sign_keyless(reg, name, built.digest, ca, rekor)
    write_policy(tmp_path / "policy.json", [keyless_policy(tmp_path, ca, rekor), signed_by(key, REPO_MATCH)])
    with pytest.raises(PolicyRejected, match="wrong key"):
        await store.pull(f"{name}:v1")
    reg.sign(name, built.digest, key)  # replaces the .sig tag: now the keyless one is missing
    with pytest.raises(PolicyRejected, match="no certificate"):
        await store.pull(f"{name}:v1")


async def test_rekor_key_beside_a_key_pair_requires_a_logged_signature(
    store: ImageStore, reg: Registry, tmp_path: Path
) -> None:
    """containers/image's `keyPath` + `rekorPublicKeyPath`: the key's signature counts only
    with a Rekor SET recording it."""
    key, rekor = cosign.SigningKey.generate(), sigstore.RekorKey.generate()
    name, built = reg.image("key-and-rekor")
    reg.sign(name, built.digest, key)
    requirement = {**signed_by(key, REPO_MATCH), "rekorPublicKeyData": base64.b64encode(rekor.public_pem).decode()}
    write_policy(tmp_path / "policy.json", [requirement])
    with pytest.raises(PolicyRejected, match="no Rekor bundle"):
        await store.pull(f"{name}:v1")
    assert_store_empty(store)
    body = cosign.payload(name, built.digest)
    signature = key.sign(body)
    bundle = rekor.bundle(key.public_pem, signature, body, datetime.datetime.now(datetime.UTC))
    annotations = {"dev.sigstore.cosign/bundle": bundle}
    cosign.push_sig_tag(reg.pusher, name.split("/", 1)[1], built.digest, key, body, annotations, signature)
    verdicts: list[Verdict] = []
    assert (await store.pull(f"{name}:v1", on_verdict=verdicts.append)).id == built.config_digest
    assert verdicts[0].detail.startswith(f"cosign signature ({built.digest.replace(':', '-')}.sig tag) by keyData")
    assert "logged in Rekor" in verdicts[0].detail


# ---- through the daemon ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("policy")


@pytest.fixture(scope="module")
def daemon(policy_dir: Path) -> Iterator[Daemon]:
    extra = f'image_policy = "{policy_dir}/policy.json"\nimage_policy_dir = "{policy_dir}/policies"\n'
    with running_daemon(extra) as d:
        yield d


def cri_pull(daemon: Daemon, ref: str, namespace: str) -> pb.PullImageResponse:
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace=namespace))
    return daemon.images.PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image=ref), sandbox_config=config), timeout=60
    )


def test_cri_pull_refused_by_the_pod_namespace_policy(daemon: Daemon, reg: Registry, policy_dir: Path) -> None:
    key = cosign.SigningKey.generate()
    name, built = reg.image("cri")
    write_policy(policy_dir / "policy.json", [{"type": "insecureAcceptAnything"}])
    write_policy(policy_dir / "policies" / "prod.json", [signed_by(key, REPO_MATCH)])
    with pytest.raises(grpc.RpcError) as caught:
        cri_pull(daemon, f"{name}:v1", "prod")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "prod.json (scope default)" in caught.value.details()
    assert "no signature" in caught.value.details()
    listed = daemon.images.ListImages(pb.ListImagesRequest(), timeout=30).images
    assert built.config_digest not in {i.id for i in listed}
    assert cri_pull(daemon, f"{name}:v1", "dev").image_ref == built.config_digest


def test_policy_syntax_error_stops_the_daemon_naming_file_and_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text('{\n  "default": [\n    {"type": "reject"},,\n  ]\n}\n')
    with running_daemon(f'image_policy = "{policy}"\n', start=False) as d:
        with pytest.raises(RuntimeError, match="crishim exited"):
            d.start(timeout=60)
        assert f"{policy}:3:" in d.log_tail()


def test_crishim_pull_prints_the_verification_step(reg: Registry, tmp_path: Path) -> None:
    key = cosign.SigningKey.generate()
    name, built = reg.image("cli")
    reg.sign(name, built.digest, key)
    write_policy(tmp_path / "policies" / "prod.json", [signed_by(key, REPO_MATCH)])
    config = write_config(
        tmp_path, f'image_policy = "{tmp_path}/policy.json"\nimage_policy_dir = "{tmp_path}/policies"\n'
    )
    base = [sys.executable, "-m", "crishim.runtime.cli", "--config", str(config), "pull", f"{name}:v1"]
    signed = subprocess.run([*base, "--namespace", "prod"], capture_output=True, text=True, timeout=120)
    assert signed.returncode == 0, signed.stderr
    assert f"policy: verified: cosign signature ({built.digest.replace(':', '-')}.sig tag)" in signed.stdout
    assert f"scope default of {tmp_path}/policies/prod.json" in signed.stdout
    unsigned_name, _ = reg.image("cli-unsigned")
    refused = subprocess.run(
        [*base[:-1], f"{unsigned_name}:v1", "--namespace", "prod"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0
    assert "no signature" in refused.stderr
