"""Push images we built to a registry over the distribution HTTP API.

Tests and scripts/build-test-images fill a local docker-registry with images whose
bytes we control, so this is a small synchronous client: blobs go up as one
monolithic upload (POST, then PUT with the digest), manifests are PUT children
first so the registry can check every reference of an index.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urljoin

import httpx
from crishim.images.build import DOCKER_LIST, OCI_INDEX, REF_NAME_ANNOTATION, Built, BuiltImage, BuiltIndex
from crishim.images.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Credentials:
    """Username/password for basic auth or the token server; `token` is a ready bearer token."""

    username: str = ""
    password: str = ""
    token: str = ""


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class RegistryAuth(httpx.Auth):
    """Answer a registry's 401 challenge: Basic with the credentials, or Bearer via its token realm."""

    def __init__(self, credentials: Credentials | None = None) -> None:
        self._creds = credentials or Credentials()
        self._header = f"Bearer {self._creds.token}" if self._creds.token else ""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._header:
            request.headers["Authorization"] = self._header
        response = yield request
        if response.status_code != 401 or self._creds.token:
            return
        challenge = response.headers.get("www-authenticate", "")
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        if scheme.lower() == "basic":
            if not self._creds.username:
                return
            self._header = _basic(self._creds)
        elif scheme.lower() == "bearer" and "realm" in params:
            query = {k: v for k, v in params.items() if k in ("service", "scope")}
            token_request = httpx.Request("GET", params["realm"], params=query)
            if self._creds.username:
                token_request.headers["Authorization"] = _basic(self._creds)
            token_response = yield token_request
            if token_response.status_code != 200:
                return
            token_response.read()
            body = token_response.json()
            self._header = "Bearer " + (body.get("token") or body.get("access_token", ""))
        else:
            return
        request.headers["Authorization"] = self._header
        yield request


class Pusher:
    """A session against one registry (`host` is "HOST:PORT"; plain HTTP unless `https`)."""

    def __init__(
        self, host: str, *, credentials: Credentials | None = None, https: bool = False, timeout: float = 60.0
    ) -> None:
        self.base = f"{'https' if https else 'http'}://{host}"
        self._client = httpx.Client(auth=RegistryAuth(credentials), timeout=timeout)

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _check(self, response: httpx.Response, what: str, ok: Iterable[int]) -> None:
        if response.status_code in ok:
            return
        detail = response.text[:300]
        if response.status_code in (401, 403):
            raise PermissionDenied(f"{what}: registry {self.base} refused access ({response.status_code}): {detail}")
        if response.status_code == 404:
            raise NotFound(f"{what}: registry {self.base} says not found: {detail}")
        raise Unavailable(f"{what}: registry {self.base} answered {response.status_code}: {detail}")

    def has_blob(self, repository: str, digest: str) -> bool:
        r = self._client.head(f"{self.base}/v2/{repository}/blobs/{digest}")
        if r.status_code == 404:
            return False
        self._check(r, f"checking blob {digest}", (200,))
        return True

    def push_blob(self, repository: str, digest: str, data: bytes) -> None:
        if self.has_blob(repository, digest):
            return
        r = self._client.post(f"{self.base}/v2/{repository}/blobs/uploads/")
        self._check(r, f"starting upload of {digest} to {repository}", (202,))
        location = urljoin(self.base + "/", r.headers["location"])
        # The upload URL carries the registry's state in its query: append, never replace.
        location += ("&" if "?" in location else "?") + urlencode({"digest": digest})
        r = self._client.put(
            location,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._check(r, f"uploading blob {digest} to {repository}", (201,))

    def push_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT a manifest or index by tag or digest; returns the digest the registry reports."""
        r = self._client.put(
            f"{self.base}/v2/{repository}/manifests/{reference}",
            content=data,
            headers={"Content-Type": media_type},
        )
        self._check(r, f"putting manifest {repository}:{reference}", (201, 200))
        return str(r.headers.get("docker-content-digest", ""))

    def push(self, repository: str, built: Built, tags: Iterable[str] = ()) -> str:
        """Push an image or index with all its blobs, tag it, and return its manifest digest."""
        images = built.images if isinstance(built, BuiltIndex) else (built,)
        for image in images:
            self._push_image(repository, image)
        tags = list(tags)
        for ref in tags or [built.digest]:
            self.push_manifest(repository, ref, built.manifest, built.media_type)
        return built.digest

    def _push_image(self, repository: str, image: BuiltImage) -> None:
        for layer in image.layers:
            self.push_blob(repository, layer.digest, layer.data)
        self.push_blob(repository, image.config_digest, image.config)
        self.push_manifest(repository, image.digest, image.manifest, image.media_type)

    def get_manifest(self, repository: str, reference: str, accept: Iterable[str]) -> httpx.Response:
        r = self._client.get(
            f"{self.base}/v2/{repository}/manifests/{reference}", headers={"Accept": ", ".join(accept)}
        )
        self._check(r, f"getting manifest {repository}:{reference}", (200,))
        return r

    def get_blob(self, repository: str, digest: str) -> bytes:
        r = self._client.get(f"{self.base}/v2/{repository}/blobs/{digest}", follow_redirects=True)
        self._check(r, f"getting blob {digest}", (200,))
        return r.content


def push_image(
    host: str,
    repository: str,
    built: Built,
    tags: Iterable[str] = (),
    *,
    credentials: Credentials | None = None,
) -> str:
    """One-shot form of Pusher.push."""
    with Pusher(host, credentials=credentials) as pusher:
        return pusher.push(repository, built, tags)


def push_layout(
    layout: Path,
    host: str,
    repository: str,
    *,
    tags: Iterable[str] | None = None,
    credentials: Credentials | None = None,
) -> dict[str, str]:
    """Push every top-level entry of an OCI layout directory; returns tag (or digest) -> digest.

    Tags come from each entry's org.opencontainers.image.ref.name unless `tags` is given,
    in which case every entry gets those tags (meant for single-entry layouts).
    """
    index_path = layout / "index.json"
    if not index_path.is_file():
        raise InvalidArgument(f"{layout} is not an OCI image layout: index.json is missing")

    def blob(digest: str) -> bytes:
        path = layout / "blobs" / digest.replace(":", "/", 1)
        if not path.is_file():
            raise NotFound(f"layout {layout} lacks blob {digest}")
        return path.read_bytes()

    pushed: dict[str, str] = {}
    with Pusher(host, credentials=credentials) as pusher:

        def push_manifest_tree(desc: dict[str, object]) -> None:
            digest = str(desc["digest"])
            data = blob(digest)
            media_type = str(desc.get("mediaType") or json.loads(data).get("mediaType", ""))
            doc = json.loads(data)
            if media_type in (OCI_INDEX, DOCKER_LIST):
                for child in doc.get("manifests", []):
                    push_manifest_tree(child)
            else:
                for child in [doc["config"], *doc.get("layers", [])]:
                    pusher.push_blob(repository, child["digest"], blob(child["digest"]))
            pusher.push_manifest(repository, digest, data, media_type)

        top = json.loads(index_path.read_bytes())
        for desc in top.get("manifests", []):
            push_manifest_tree(desc)
            digest = str(desc["digest"])
            data = blob(digest)
            media_type = str(desc.get("mediaType", ""))
            annotations = desc.get("annotations") or {}
            names = list(tags) if tags is not None else [annotations.get(REF_NAME_ANNOTATION, "")]
            for tag in filter(None, names):
                pusher.push_manifest(repository, tag, data, media_type)
                pushed[tag] = digest
            if not any(names):
                pushed[digest] = digest
    return pushed
