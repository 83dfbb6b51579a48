"""Manifest records, media types and pull credentials: what the store needs without the HTTP client.

Kept apart from registry.py so that importing the store does not import httpx
and its TLS stack: a daemon that pulls nothing stays small (idle RSS target).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument, NotFound
from .platforms import Platform, pick_manifest
from .reference import validate_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST_BYTES = 4 << 20
BLOB_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """What the CRI AuthConfig carries, without protobuf; secrets never appear in repr()."""

    username: str = ""
    password: str = ""
    auth: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, secrets=<redacted>)"

    def user_password(self) -> tuple[str, str] | None:
        """username/password, or the decoded `auth` field (base64 of `user:password`)."""
        if self.username or self.password:
            return self.username, self.password
        if self.auth:
            try:
                decoded = base64.b64decode(self.auth, validate=True).decode()
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidArgument("auth must be base64 of 'username:password'") from exc
            user, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("auth must be base64 of 'username:password' (no ':' found)")
            return user, password
        return None


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any, where: str) -> Descriptor:
        if not isinstance(data, dict) or not isinstance(data.get("digest"), str):
            raise InvalidArgument(f"{where}: a descriptor lacks a digest")
        size = data.get("size", -1)
        if not isinstance(size, int):
            raise InvalidArgument(f"{where}: descriptor size must be an integer")
        validate_digest(data["digest"])
        return cls(
            media_type=str(data.get("mediaType", "")),
            digest=data["digest"],
            size=size,
            urls=tuple(data.get("urls") or ()),
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest chosen for this platform, and how it was reached."""

    digest: str  # of the manifest itself
    top_digest: str  # of what the reference named (an index, or this manifest): the repo digest
    media_type: str
    raw: bytes
    config: Descriptor
    layers: tuple[Descriptor, ...]


def json_object(raw: bytes, what: str) -> dict[str, Any]:
    """`raw` parsed as a JSON object; InvalidArgument naming `what` otherwise."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return data


def parse_image_config(raw: bytes, manifest: Manifest, where: str) -> tuple[dict[str, Any], list[str], bool]:
    """(config, diff IDs, whether the diff IDs come from the config and can be verified).

    An OCI artifact's config (often the empty `{}`, media type
    application/vnd.oci.empty.v1+json) says nothing of its layers. KEP-4639 mounts
    such artifacts when their layers are tars: they are keyed by blob digest
    instead (equal to the diff ID for an uncompressed tar), and checked against
    that digest only.
    """
    config = json_object(raw, f"{where}: the config blob")
    if "rootfs" not in config:
        return config, [d.digest for d in manifest.layers], False
    try:
        diff_ids = config["rootfs"]["diff_ids"]
    except (KeyError, TypeError) as exc:
        raise InvalidArgument(f"{where}: the config blob is not an OCI image config ({exc})") from exc
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument(f"{where}: rootfs.diff_ids must be a list of digests")
    if len(diff_ids) != len(manifest.layers):
        raise InvalidArgument(
            f"{where}: the manifest lists {len(manifest.layers)} layers but the config {len(diff_ids)} diff IDs"
        )
    return config, diff_ids, True


def select_from_index(data: dict[str, Any], where: str, platform: Platform) -> Descriptor:
    """The manifest of an image index for `platform`; NotFound lists what the index offers."""
    entries = data.get("manifests")
    if not isinstance(entries, list):
        raise InvalidArgument(f"{where}: the index has no manifests list")
    chosen = pick_manifest([e for e in entries if isinstance(e, dict)], platform)
    if chosen is None:
        offered = sorted(
            {
                "/".join(
                    str(p)
                    for p in (
                        e.get("platform", {}).get("os"),
                        e.get("platform", {}).get("architecture"),
                        e.get("platform", {}).get("variant"),
                    )
                    if p
                )
                for e in entries
                if isinstance(e, dict) and isinstance(e.get("platform"), dict)
            }
        )
        raise NotFound(
            f"{where} has no image for this machine's platform {platform}; it offers: {', '.join(offered) or 'nothing'}"
        )
    return Descriptor.from_json(chosen, where)


def parse_image_manifest(data: dict[str, Any], where: str) -> tuple[Descriptor, tuple[Descriptor, ...]]:
    """An image manifest's config and layer descriptors, each checked."""
    config = Descriptor.from_json(data.get("config"), where)
    layers_json = data.get("layers")
    if not isinstance(layers_json, list):
        raise InvalidArgument(f"{where}: the manifest has no layers list")
    return config, tuple(Descriptor.from_json(layer, where) for layer in layers_json)
