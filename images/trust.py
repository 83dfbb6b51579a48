"""The policy check of a pull: after the manifest is resolved, before any layer is fetched.

The Puller asks `ImageVerifier.check` with the policy chosen for the pull (policy.py) and the
resolved manifest. Signatures are looked up once per pull (signatures.py) and only when the
scope requires them. An accepted verdict is cached per (policy file and version, scope,
repository, manifest digest), so pulling a verified image again costs no registry request;
a refusal is not cached, so a signature pushed later is found by the next pull.
"""

from __future__ import annotations

import collections
import logging
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

    def __str__(self) -> str:
        return f"{self.outcome}: {self.detail} (scope {self.scope} of {self.policy})"


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
            return cached
        try:
            verdict = await self._evaluate(policy, scope, requirements, registry, session, ref, manifest)
        except PolicyRejected:
            self.counts["rejected"] += 1
            raise
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
            problem, found_in = _first_valid(requirement, signatures, ref, manifest.top_digest)
            if problem:
                raise refuse(problem)
            details.append(f"cosign signature ({found_in}) by {', '.join(requirement.key_names)}")
        return Verdict("verified", policy.source, scope, "; ".join(details))


def _first_valid(
    requirement: Requirement, signatures: list[CosignSignature], ref: Reference, digest: str
) -> tuple[str, str]:
    """('', where the accepted signature was found), or (the best reason none is accepted, '').

    A payload is believed only once its signature verifies, so a forged payload can only
    ever yield "wrong key"."""
    reasons: list[str] = []
    for sig in signatures:
        if not any(signature_valid(key, sig.payload, sig.signature) for key in requirement.keys):
            reasons.append(
                f"wrong key: the signature ({sig.found_in}) was not made by {', '.join(requirement.key_names)}"
            )
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
        return "", sig.found_in
    # The reason of the signature that got furthest (key, then digest, then identity).
    order = ("identity mismatch", "digest mismatch", "invalid signature payload", "wrong key")
    reasons.sort(key=lambda r: next((i for i, p in enumerate(order) if r.startswith(p)), len(order)))
    return reasons[0], ""
