"""The policy check of a pull: after the manifest is resolved, before any layer is fetched.

The Puller asks `ImageVerifier.check` with the policy chosen for the pull (policy.py) and the
resolved manifest. Signatures are looked up once per pull (signatures.py) and only when the
scope requires them; a keyless requirement checks each one's Fulcio certificate and Rekor
SET offline (fulcio.py) before its payload signature. An accepted verdict is cached per (policy file and version, scope,
repository, manifest digest), so pulling a verified image again costs no registry request;
a refusal is not cached, so a signature pushed later is found by the next pull.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import InvalidArgument
from .manifest import Manifest
from .policy import Policy, PolicyRejected, Requirement
from .reference import Reference
from .signatures import CosignSignature, find_signatures, parse_payload, signature_valid

if TYPE_CHECKING:
    from .registry import RegistryClient, _Session

log = logging.getLogger(__name__)

Outcome = Literal["verified", "unsigned"]
MAX_CACHED = 4096


@dataclass(frozen=True, slots=True)
class Verdict:
    """An accepted pull: `verified` (every sigstoreSigned requirement held) or `unsigned`
    (the scope asks for no signature)."""

    outcome: Outcome
    policy: str  # the policy file
    scope: str
    detail: str
    # How long the check took, signature fetches included (the time it adds to a pull: no
    # layer is fetched before it ends); a verdict from the cache cost nothing to speak of.
    seconds: float = 0.0
    cached: bool = False

    def __str__(self) -> str:
        how = "from the cache" if self.cached else f"checked in {self.seconds * 1000:.1f} ms"
        return f"{self.outcome}: {self.detail} (scope {self.scope} of {self.policy}; {how})"


VerdictFn = Callable[[Verdict], None]


class ImageVerifier:
    """Checks pulls against their policy; keeps the verdict cache and the counts /metrics shows."""

    def __init__(self) -> None:
        self._accepted: collections.OrderedDict[tuple[object, ...], Verdict] = collections.OrderedDict()
        self.counts: collections.Counter[str] = collections.Counter()

    async def check(
        self, policy: Policy, registry: RegistryClient, session: _Session, ref: Reference, manifest: Manifest
    ) -> Verdict:
        """The verdict for `manifest` of `ref`; PolicyRejected (FAILED_PRECONDITION) when refused."""
        scope, requirements = policy.requirements_for(ref)
        key = (policy.source, policy.revision, scope, ref.name, ref.repo_tag, manifest.top_digest)
        cached = self._accepted.get(key)
        if cached is not None:
            self._accepted.move_to_end(key)
            self.counts[cached.outcome] += 1
            return dataclasses.replace(cached, seconds=0.0, cached=True)
        start = time.perf_counter()
        try:
            verdict = await self._evaluate(policy, scope, requirements, registry, session, ref, manifest)
        except PolicyRejected:
            self.counts["rejected"] += 1
            raise
        verdict = dataclasses.replace(verdict, seconds=time.perf_counter() - start)
        self.counts[verdict.outcome] += 1
        self._accepted[key] = verdict
        while len(self._accepted) > MAX_CACHED:
            self._accepted.popitem(last=False)
        return verdict

    async def _evaluate(
        self,
        policy: Policy,
        scope: str,
        requirements: tuple[Requirement, ...],
        registry: RegistryClient,
        session: _Session,
        ref: Reference,
        manifest: Manifest,
    ) -> Verdict:
        def refuse(reason: str) -> PolicyRejected:
            return PolicyRejected(f"image {ref} rejected by policy {policy.source} (scope {scope}): {reason}")

        if any(r.type == "reject" for r in requirements):
            raise refuse("the scope rejects every image")
        signed = [r for r in requirements if r.type == "sigstoreSigned"]
        if not signed:
            return Verdict("unsigned", policy.source, scope, "no signature required")
        signatures = await find_signatures(registry, session, ref, manifest.top_digest)
        if not signatures:
            raise refuse(
                f"no signature: no cosign signature for {manifest.top_digest} (looked for the "
                f"{manifest.top_digest.replace(':', '-', 1)}.sig tag and OCI referrers)"
            )
        details = []
        for requirement in signed:
            problem, detail = _first_valid(requirement, signatures, ref, manifest.top_digest)
            if problem:
                raise refuse(problem)
            details.append(detail)
        return Verdict("verified", policy.source, scope, "; ".join(details))


# Failure kinds, from the signature that got furthest to the one that got least far: the
# reason reported is the furthest one's. A key-pair signature meets its key first (then the
# Rekor SET when the policy gives a Rekor key); a keyless one meets the SET first, then
# its certificate, then the certificate's key.
_CLAIM_ORDER = ("identity mismatch", "digest mismatch", "invalid signature payload")
_KEYED_ORDER = (*_CLAIM_ORDER, "bad Rekor SET", "no Rekor bundle", "wrong key")
_KEYLESS_ORDER = (
    *_CLAIM_ORDER,
    "wrong key",
    "wrong signer identity",
    "untrusted certificate",
    "SET time outside",
    "bad Rekor SET",
    "no Rekor bundle",
    "no certificate",
)


def _first_valid(
    requirement: Requirement, signatures: list[CosignSignature], ref: Reference, digest: str
) -> tuple[str, str]:
    """('', what the accepted signature is), or (the best reason none is accepted, '').

    A payload is believed only once its signature verifies, so a forged payload can only
    ever yield "wrong key" (or, keyless, a certificate or Rekor failure)."""
    reasons: list[str] = []
    for sig in signatures:
        problem, detail = (_keyed if requirement.fulcio is None else _keyless)(requirement, sig)
        if problem:
            reasons.append(problem)
            continue
        try:
            claim = parse_payload(sig.payload)
        except InvalidArgument as exc:
            reasons.append(f"invalid signature payload: {exc}")
            continue
        if claim.manifest_digest != digest:
            reasons.append(f"digest mismatch: the signature is for {claim.manifest_digest}, the image is {digest}")
            continue
        if not requirement.identity.matches(ref, claim.docker_reference):
            reasons.append(
                f"identity mismatch: the signature names {claim.docker_reference!r}, which does not satisfy "
                f"signedIdentity {requirement.identity.describe()} for {ref}"
            )
            continue
        return "", detail
    order = _KEYED_ORDER if requirement.fulcio is None else _KEYLESS_ORDER
    reasons.sort(key=lambda r: next((i for i, p in enumerate(order) if r.startswith(p)), len(order)))
    return reasons[0], ""


def _keyed(requirement: Requirement, sig: CosignSignature) -> tuple[str, str]:
    """('', the verdict's words) when one of the requirement's keys made `sig` (and, with a
    Rekor key, Rekor logged it); (the reason, '') otherwise."""
    key = next((k for k in requirement.keys if signature_valid(k, sig.payload, sig.signature)), None)
    if key is None:
        return f"wrong key: the signature ({sig.found_in}) was not made by {', '.join(requirement.key_names)}", ""
    detail = f"cosign signature ({sig.found_in}) by {requirement.key_names[requirement.keys.index(key)]}"
    if not requirement.rekor_key:
        return "", detail
    from cryptography.hazmat.primitives import serialization

    from .fulcio import BUNDLE_ANNOTATION, KeylessRejected, verify_set

    bundle = sig.annotations.get(BUNDLE_ANNOTATION, "")
    if not bundle:
        return f"no Rekor bundle: the signature ({sig.found_in}) carries no {BUNDLE_ANNOTATION} annotation", ""
    spki = serialization.load_pem_public_key(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        verify_set(requirement.rekor_key, requirement.rekor_name, bundle.encode(), spki, sig.signature, sig.payload)
    except KeylessRejected as exc:
        return f"{exc} (signature {sig.found_in})", ""
    return "", f"{detail}, logged in Rekor"


def _keyless(requirement: Requirement, sig: CosignSignature) -> tuple[str, str]:
    """('', the verdict's words) when `sig` carries a Fulcio certificate and Rekor SET that
    hold against the requirement's roots and its payload verifies with the certificate's
    key; (the reason, '') otherwise."""
    from .fulcio import KeylessRejected, verify_keyless

    roots = requirement.fulcio
    assert roots is not None
    try:
        signer = verify_keyless(
            roots, requirement.rekor_key, requirement.rekor_name, sig.annotations, sig.signature, sig.payload
        )
    except KeylessRejected as exc:
        return f"{exc} (signature {sig.found_in})", ""
    if not signature_valid(signer.public_pem, sig.payload, sig.signature):
        return f"wrong key: the signature ({sig.found_in}) was not made by its certificate's key", ""
    return "", (
        f"cosign keyless signature ({sig.found_in}) by {signer.email} (issuer {signer.issuer}), "
        f"certificate from {roots.ca_name}, logged in Rekor"
    )
