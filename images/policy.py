"""Image trust policies in the containers-policy.json(5) format that CRI-O and podman read.

A policy maps scopes to requirements. The scopes of the `docker` transport are, from the
most specific: `host/repo:tag` (or `host/repo@digest`), `host/repo`, each parent namespace
(`host/ns`), `host`, wildcard domains (`*.example.com`), then the transport's `""`; when none
is set the file's `default` applies. As in containers/image, the most specific scope present
wins alone: its requirements are not merged with broader ones. Every requirement of the
chosen scope must hold.

Supported requirements: `insecureAcceptAnything`, `reject`, and `sigstoreSigned` with
`keyPath`, `keyPaths` or `keyData` (cosign key pairs), or with `fulcio` (`caPath`/`caData`,
`oidcIssuer`, `subjectEmail`) and `rekorPublicKeyPath`/`rekorPublicKeyData` for keyless
signatures, checked offline against those roots (fulcio.py). A Rekor key given beside
a key pair makes a valid Rekor SET required for that key's signatures too.

Per-namespace policies (as CRI-O does) live in `<policy dir>/<namespace>.json` and replace
the node's policy for pulls made for pods of that namespace. Files are re-read when they
change; a file that cannot be parsed is an error naming the file and line.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import FailedPrecondition, InvalidArgument
from .reference import DEFAULT_TAG, Reference, parse_reference

if TYPE_CHECKING:
    from .fulcio import FulcioRoots


class PolicyInvalid(FailedPrecondition):
    """A policy file that cannot be used: bad JSON, an unknown requirement, an unreadable key."""


class PolicyRejected(FailedPrecondition):
    """An image the policy refuses: message names the policy file, the scope and the reason."""


IdentityKind = Literal[
    "matchRepoDigestOrExact", "matchRepository", "matchExact", "remapIdentity", "exactReference", "exactRepository"
]
_IDENTITY_KINDS = (
    "matchRepoDigestOrExact",
    "matchRepository",
    "matchExact",
    "remapIdentity",
    "exactReference",
    "exactRepository",
)
_REVISIONS = itertools.count(1)
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class SignedIdentity:
    """Which `docker-reference` a signature must carry for the image being pulled."""

    kind: IdentityKind = "matchRepoDigestOrExact"
    reference: str = ""  # exactReference / exactRepository
    prefix: str = ""  # remapIdentity
    signed_prefix: str = ""

    def matches(self, image: Reference, signed: str) -> bool:
        """Whether a signature claiming `signed` may vouch for `image` (containers/image's rules)."""
        try:
            claimed, claimed_full = _parse_signed(signed)
        except ValueError:
            return False
        if self.kind == "matchRepository":
            return claimed.name == image.name
        if self.kind == "matchExact":
            return claimed_full and str(claimed) == str(image)
        if self.kind == "exactReference":
            return claimed_full and str(claimed) == self.reference
        if self.kind == "exactRepository":
            return claimed.name == self.reference
        if self.kind == "remapIdentity":
            image = self._remapped(image)
        if image.digest is not None:
            return claimed.name == image.name
        return claimed_full and claimed.digest is None and str(claimed) == str(image)

    def _remapped(self, image: Reference) -> Reference:
        text = str(image)
        if not (text.startswith(self.prefix) and text[len(self.prefix) : len(self.prefix) + 1] in ("", "/", ":", "@")):
            return image
        try:
            return parse_reference(self.signed_prefix + text[len(self.prefix) :])
        except InvalidArgument:
            return image

    def describe(self) -> str:
        if self.kind in ("exactReference", "exactRepository"):
            return f"{self.kind} {self.reference}"
        if self.kind == "remapIdentity":
            return f"remapIdentity {self.prefix} -> {self.signed_prefix}"
        return self.kind


def _parse_signed(text: str) -> tuple[Reference, bool]:
    """A signature's docker-reference, and whether it names a tag or digest (cosign's names none)."""
    try:
        ref = parse_reference(text)
    except InvalidArgument as exc:
        raise ValueError(str(exc)) from exc
    name_part = text.split("@", 1)[0]
    tagged = name_part.rfind(":") > name_part.rfind("/")
    return ref, tagged or ref.digest is not None


@dataclass(frozen=True, slots=True)
class Requirement:
    """One requirement: `insecureAcceptAnything`, `reject`, or `sigstoreSigned` with its keys
    or its Fulcio roots."""

    type: Literal["insecureAcceptAnything", "reject", "sigstoreSigned"]
    keys: tuple[bytes, ...] = ()  # PEM public keys (sigstoreSigned)
    key_names: tuple[str, ...] = ()  # where each key came from, for messages
    identity: SignedIdentity = field(default_factory=SignedIdentity)
    fulcio: FulcioRoots | None = None  # keyless: the trusted CA and the signer's identity
    rekor_key: bytes = b""  # PEM; required with fulcio, optional with keys
    rekor_name: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    """One parsed policy file: the default requirements and the docker transport's scopes."""

    source: str
    default: tuple[Requirement, ...]
    scopes: dict[str, tuple[Requirement, ...]]
    # Tells a re-read file from the one before it (the verdict cache's key).
    revision: int = field(default_factory=lambda: next(_REVISIONS))

    def requirements_for(self, ref: Reference) -> tuple[str, tuple[Requirement, ...]]:
        """(the scope that applies to `ref`, its requirements): the most specific scope set."""
        for scope in _candidate_scopes(ref):
            if scope in self.scopes:
                return f"docker:{scope}" if scope else "docker", self.scopes[scope]
        return "default", self.default

    @property
    def needs_signatures(self) -> bool:
        every = [self.default, *self.scopes.values()]
        return any(r.type == "sigstoreSigned" for reqs in every for r in reqs)


def _candidate_scopes(ref: Reference) -> list[str]:
    """From the most specific: the exact reference, the repository, its parents, the host,
    wildcard domains, and the transport-wide "" scope."""
    exact = f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag or DEFAULT_TAG}"
    scopes = [exact]
    parts = ref.name.split("/")
    scopes += ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
    host = ref.domain.split(":", 1)[0]
    labels = host.split(".")
    scopes += ["*." + ".".join(labels[n:]) for n in range(1, len(labels))]
    scopes.append("")
    return scopes


def parse_policy(text: str, source: str) -> Policy:
    """Parses a containers-policy.json document; PolicyInvalid names `source` and, for JSON
    errors, the line and column."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyInvalid(
            f"{source}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(data, dict):
        raise PolicyInvalid(f"{source}: a policy must be a JSON object with a 'default' key")
    if "default" not in data:
        raise PolicyInvalid(f'{source}: the \'default\' requirements are missing (e.g. [{{"type": "reject"}}])')
    base = Path(source).parent
    default = _requirements(data["default"], f"{source}: default", base)
    scopes: dict[str, tuple[Requirement, ...]] = {}
    transports = data.get("transports", {})
    if not isinstance(transports, dict):
        raise PolicyInvalid(f"{source}: 'transports' must be an object")
    docker = transports.get("docker", {})
    if not isinstance(docker, dict):
        raise PolicyInvalid(f"{source}: transports.docker must be an object of scope -> requirements")
    for scope, reqs in docker.items():
        _check_scope(scope, source)
        scopes[scope] = _requirements(reqs, f"{source}: transports.docker[{scope!r}]", base)
    return Policy(source=source, default=default, scopes=scopes)


def _check_scope(scope: str, source: str) -> None:
    if scope == "" or scope.startswith("*."):
        return
    try:
        parse_reference(scope if "/" in scope else scope + "/x")
    except InvalidArgument as exc:
        raise PolicyInvalid(
            f"{source}: transports.docker scope {scope!r} is not a registry, repository or reference: {exc}"
        ) from exc


def _requirements(value: Any, where: str, base: Path) -> tuple[Requirement, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyInvalid(f"{where}: expected a non-empty list of requirements")
    return tuple(_requirement(item, f"{where}[{i}]", base) for i, item in enumerate(value))


def _requirement(item: Any, where: str, base: Path) -> Requirement:
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        raise PolicyInvalid(f"{where}: a requirement is an object with a 'type'")
    kind = item["type"]
    if kind in ("insecureAcceptAnything", "reject"):
        return Requirement(type=kind)
    if kind == "signedBy":
        raise PolicyInvalid(f"{where}: 'signedBy' (GPG simple signing) is not supported yet; use sigstoreSigned")
    if kind != "sigstoreSigned":
        raise PolicyInvalid(
            f"{where}: unknown requirement type {kind!r} (known: insecureAcceptAnything, reject, sigstoreSigned)"
        )
    rekor_key, rekor_name = _rekor_key(item, where, base)
    identity = _identity(item, where)
    if "fulcio" in item:
        if any(k in item for k in ("keyPath", "keyPaths", "keyData", "keyDatas")):
            raise PolicyInvalid(f"{where}: sigstoreSigned takes either keys or fulcio, not both")
        if not rekor_key:
            raise PolicyInvalid(
                f"{where}: keyless sigstoreSigned (fulcio) needs rekorPublicKeyPath or rekorPublicKeyData"
            )
        return Requirement(
            type="sigstoreSigned",
            identity=identity,
            fulcio=_fulcio(item["fulcio"], f"{where}.fulcio", base),
            rekor_key=rekor_key,
            rekor_name=rekor_name,
        )
    keys, names = _keys(item, where, base)
    return Requirement(
        type="sigstoreSigned", keys=keys, key_names=names, identity=identity, rekor_key=rekor_key, rekor_name=rekor_name
    )


def _pem_from(item: dict[str, Any], path_key: str, data_key: str, where: str, base: Path) -> tuple[bytes, str]:
    """The PEM named by `path_key` (relative to the policy file) or given base64 in
    `data_key`, and its name for messages; (b"", "") when neither is set."""
    if path_key in item and data_key in item:
        raise PolicyInvalid(f"{where}: give {path_key} or {data_key}, not both")
    if path_key in item:
        if not isinstance(item[path_key], str) or not item[path_key]:
            raise PolicyInvalid(f"{where}: {path_key} must name a file")
        path = base / item[path_key]
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise PolicyInvalid(f"{where}: cannot read {path_key} {path}: {exc.strerror}") from exc
    if data_key in item:
        try:
            return base64.b64decode(item[data_key], validate=True), data_key
        except (TypeError, ValueError) as exc:
            raise PolicyInvalid(f"{where}: {data_key} must be base64 of a PEM document") from exc
    return b"", ""


def _rekor_key(item: dict[str, Any], where: str, base: Path) -> tuple[bytes, str]:
    pem, name = _pem_from(item, "rekorPublicKeyPath", "rekorPublicKeyData", where, base)
    if pem:
        from .fulcio import load_rekor_key

        try:
            load_rekor_key(pem)
        except ValueError as exc:
            raise PolicyInvalid(f"{where}: {name}: not a usable Rekor public key: {exc}") from exc
    return pem, name


def _fulcio(value: Any, where: str, base: Path) -> FulcioRoots:
    from .fulcio import FulcioRoots, load_ca_certificates

    if not isinstance(value, dict):
        raise PolicyInvalid(f"{where}: must be an object with caPath or caData, oidcIssuer and subjectEmail")
    unknown = set(value) - {"caPath", "caData", "oidcIssuer", "subjectEmail"}
    if unknown:
        raise PolicyInvalid(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    pem, name = _pem_from(value, "caPath", "caData", where, base)
    if not pem:
        raise PolicyInvalid(f"{where}: needs caPath or caData (the Fulcio CA certificates)")
    try:
        load_ca_certificates(pem)
    except ValueError as exc:
        raise PolicyInvalid(f"{where}: {name}: not usable CA certificates: {exc}") from exc
    texts = {}
    for key in ("oidcIssuer", "subjectEmail"):
        text = value.get(key)
        if not isinstance(text, str) or not text:
            raise PolicyInvalid(f"{where}: {key} must be a non-empty string")
        texts[key] = text
    return FulcioRoots(ca_pem=pem, ca_name=name, oidc_issuer=texts["oidcIssuer"], subject_email=texts["subjectEmail"])


def _keys(item: dict[str, Any], where: str, base: Path) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
    given = [k for k in ("keyPath", "keyPaths", "keyData", "keyDatas") if k in item]
    if len(given) != 1:
        raise PolicyInvalid(f"{where}: sigstoreSigned needs exactly one of keyPath, keyPaths, keyData or fulcio")
    found: list[tuple[bytes, str]] = []
    if given[0] in ("keyPath", "keyPaths"):
        paths = [item["keyPath"]] if given[0] == "keyPath" else item["keyPaths"]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise PolicyInvalid(f"{where}: {given[0]} must name public key files")
        for path_text in paths:
            path = base / path_text
            try:
                found.append((path.read_bytes(), str(path)))
            except OSError as exc:
                raise PolicyInvalid(f"{where}: cannot read public key {path}: {exc.strerror}") from exc
    else:
        datas = [item["keyData"]] if given[0] == "keyData" else item["keyDatas"]
        for n, data in enumerate(datas if isinstance(datas, list) else [None]):
            try:
                found.append((base64.b64decode(data, validate=True), f"keyData[{n}]" if n else "keyData"))
            except (TypeError, ValueError) as exc:
                raise PolicyInvalid(f"{where}: {given[0]} must be base64 of a PEM public key") from exc
    for pem, name in found:
        _check_key(pem, f"{where}: {name}")
    return tuple(p for p, _ in found), tuple(n for _, n in found)


def _check_key(pem: bytes, where: str) -> None:
    from .signatures import load_public_key

    try:
        load_public_key(pem)
    except ValueError as exc:
        raise PolicyInvalid(f"{where}: not a usable public key: {exc}") from exc


def _identity(item: dict[str, Any], where: str) -> SignedIdentity:
    value = item.get("signedIdentity")
    if value is None:
        return SignedIdentity()
    if not isinstance(value, dict) or value.get("type") not in _IDENTITY_KINDS:
        raise PolicyInvalid(f"{where}: signedIdentity.type must be one of {', '.join(_IDENTITY_KINDS)}")
    kind = value["type"]
    if kind == "exactReference":
        return SignedIdentity(kind, reference=_string(value, "dockerReference", where))
    if kind == "exactRepository":
        return SignedIdentity(kind, reference=_string(value, "dockerRepository", where))
    if kind == "remapIdentity":
        return SignedIdentity(
            kind, prefix=_string(value, "prefix", where), signed_prefix=_string(value, "signedPrefix", where)
        )
    return SignedIdentity(kind)


def _string(value: dict[str, Any], key: str, where: str) -> str:
    text = value.get(key)
    if not isinstance(text, str) or not text:
        raise PolicyInvalid(f"{where}: signedIdentity.{key} must be a non-empty string")
    return text


class PolicySet:
    """The node's policy file and the per-namespace directory, re-read when a file changes.

    `for_namespace` costs two stat(2) calls when no file exists: a node without policies
    pulls as it always did.
    """

    def __init__(self, node_policy: Path | None, namespace_dir: Path | None) -> None:
        self.node_policy = node_policy
        self.namespace_dir = namespace_dir
        self._cache: dict[Path, tuple[tuple[int, int], Policy]] = {}

    @classmethod
    def from_settings(cls, node_policy: str, namespace_dir: str) -> PolicySet:
        """From the daemon's `image_policy` and `image_policy_dir` ('' turns either off)."""
        return cls(Path(node_policy) if node_policy else None, Path(namespace_dir) if namespace_dir else None)

    def load_all(self) -> list[Policy]:
        """Parses every policy file present (start-up: a broken file stops the daemon)."""
        paths = [self.node_policy] if self.node_policy is not None else []
        if self.namespace_dir is not None and self.namespace_dir.is_dir():
            paths += sorted(self.namespace_dir.glob("*.json"))
        return [p for p in (self._load(path) for path in paths) if p is not None]

    def for_namespace(self, namespace: str) -> Policy | None:
        """The policy for a pull made for a pod of `namespace` ('' = none): the namespace's file
        if there is one, else the node's; None when neither exists (accept everything)."""
        if namespace and self.namespace_dir is not None and _NAMESPACE.match(namespace):
            found = self._load(self.namespace_dir / f"{namespace}.json")
            if found is not None:
                return found
        return self._load(self.node_policy) if self.node_policy is not None else None

    def _load(self, path: Path) -> Policy | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PolicyInvalid(f"{path}: cannot read the policy: {exc.strerror}") from exc
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyInvalid(f"{path}: cannot read the policy: {exc}") from exc
        policy = parse_policy(text, str(path))
        self._cache[path] = (stamp, policy)
        return policy
