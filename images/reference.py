"""Image references: parse and normalise the names users type.

`busybox` means `docker.io/library/busybox:latest`; `host:port/name:tag`
keeps its registry; `name@sha256:...` pins a digest, and with
`name:tag@sha256:...` the digest wins (the tag is kept only for display).
Image IDs (`sha256:<hex>` or bare hex) are not references: the store
resolves those, so `parse_reference` rejects them with a hint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = frozenset({"index.docker.io", "registry-1.docker.io"})
DEFAULT_TAG = "latest"
OFFICIAL_NAMESPACE = "library"
MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"^(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_SHA256_HEX = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference; `digest` wins over `tag` when both are set."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """`docker.io/library/busybox`: the repository, with its registry."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if set, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def repo_tag(self) -> str | None:
        """`name:tag`, or None for a pull by digest (a digest wins over the tag)."""
        if self.digest is not None:
            return None
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    def repo_digest(self, digest: str) -> str:
        """`name@digest` for the manifest digest actually pulled."""
        return f"{self.name}@{digest}"

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or DEFAULT_TAG}"


def validate_digest(digest: str) -> str:
    """Checks `algorithm:hex`; only sha256 is accepted since it is all registries serve."""
    if not _DIGEST.match(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: expected 'sha256:<64 hex characters>'")
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256":
        raise InvalidArgument(f"unsupported digest algorithm {algorithm!r} in {digest!r}: only sha256 is supported")
    if not _SHA256_HEX.match(hex_part):
        raise InvalidArgument(f"invalid sha256 digest {digest!r}: expected 64 lowercase hex characters")
    return digest


def looks_like_image_id(text: str) -> bool:
    """True for `sha256:<64 hex>` or 64 bare hex characters: an image ID, not a name."""
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    return bool(_SHA256_HEX.match(text))


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first, rest
    return DEFAULT_DOMAIN, name


def parse_reference(text: str) -> Reference:
    """Parses and normalises `text`; raises InvalidArgument saying what is wrong."""
    original = text
    if not text:
        raise InvalidArgument("empty image reference: give a name such as 'busybox' or 'registry:5000/app:1.0'")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidArgument(f"invalid image reference {original!r}: it contains whitespace")
    if looks_like_image_id(text):
        raise InvalidArgument(
            f"{original!r} is an image ID, not a reference: use it to look up a stored image, not to pull"
        )
    digest: str | None = None
    if "@" in text:
        text, _, digest = text.partition("@")
        if "@" in digest:
            raise InvalidArgument(f"invalid image reference {original!r}: more than one '@'")
        validate_digest(digest)
    tag: str | None = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidArgument(
                f"invalid tag {tag!r} in {original!r}: up to 128 letters, digits, '_', '.' or '-', "
                "not starting with '.' or '-'"
            )
    if not text:
        raise InvalidArgument(f"invalid image reference {original!r}: the repository name is missing")
    domain, path = _split_domain(text)
    if not _DOMAIN.match(domain):
        raise InvalidArgument(f"invalid registry host {domain!r} in {original!r}")
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if path != path.lower():
        raise InvalidArgument(f"invalid image reference {original!r}: repository names must be lowercase")
    if not _PATH.match(path):
        raise InvalidArgument(
            f"invalid repository name {path!r} in {original!r}: use lowercase letters, digits and "
            "separators ('.', '_', '__', '-') between them, with '/' between components"
        )
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"invalid image reference {original!r}: the name is longer than {MAX_NAME_LENGTH}")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)
