"""OCI distribution v2 client: auth, manifests, platform selection, blob streams.

Only pulling lives here; verifying and storing what is pulled is content.py's
and unpack.py's job. Every endpoint (mirrors first, then the upstream) comes
from hosts.py. Transient failures (5xx, 429, connection resets) are retried
with backoff and then reported as Unavailable; 401/403 become
PermissionDenied naming the registry; 404 becomes NotFound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .blobtransport import ReadintoTransport
from .errors import (
    DataLoss,
    ImageError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unimplemented,
)
from .hosts import RegistryHost, load_hosts
from .manifest import (  # noqa: F401 - re-exported: the client's vocabulary
    ACCEPT,
    BLOB_CHUNK,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Credentials,
    Descriptor,
    Manifest,
    json_object,
    parse_image_manifest,
    select_from_index,
)
from .platforms import Platform, host_platform
from .reference import Reference
from .retry import RetryPolicy

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Session:
    """One registry endpoint plus the Authorization header that worked for one repository."""

    host: RegistryHost
    client: httpx.AsyncClient
    repository: str
    credentials: Credentials | None
    authorization: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def _is_name_resolution_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return True
        seen = seen.__cause__ or seen.__context__
    return "Name or service not known" in str(exc) or "nodename nor servname" in str(exc)


class RegistryClient:
    """Pulls manifests and blobs; one instance serves the whole daemon (connection pools are shared)."""

    def __init__(
        self,
        config_dir: Path | None,
        *,
        retries: int = 3,
        backoff: float = 0.2,
        connect_timeout: float = 15.0,
        read_timeout: float = 60.0,
        platform: Platform | None = None,
    ) -> None:
        self.config_dir = config_dir
        self.retry = RetryPolicy(retries, backoff)
        self.platform = platform or host_platform()
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._clients: dict[RegistryHost, httpx.AsyncClient] = {}
        # Layer bodies are read in the unpack threads, through blocking clients (see open_blob_body).
        self._blob_clients: dict[RegistryHost, httpx.Client] = {}

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        blob_clients, self._blob_clients = list(self._blob_clients.values()), {}
        for blob_client in blob_clients:
            blob_client.close()

    @staticmethod
    def _verify(host: RegistryHost) -> ssl.SSLContext | bool:
        """The TLS settings of a host (hosts.toml): its CAs and client certificates, or no check."""
        if host.scheme != "https":
            return True
        if host.skip_verify:
            return False
        ctx = ssl.create_default_context()
        for ca in host.ca_files:
            ctx.load_verify_locations(cafile=str(ca))
        for cert, key in host.client_certs:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        return ctx

    def _client_options(self, host: RegistryHost) -> dict[str, Any]:
        return {
            "verify": self._verify(host),
            "timeout": self._timeout,
            "follow_redirects": True,  # blob storage elsewhere: httpx drops Authorization across origins
            "limits": httpx.Limits(max_connections=32, max_keepalive_connections=16),
            "headers": {"User-Agent": "crishim"},
        }

    def _client(self, host: RegistryHost) -> httpx.AsyncClient:
        client = self._clients.get(host)
        if client is None:
            client = self._clients[host] = httpx.AsyncClient(**self._client_options(host))
        return client

    def _blob_client(self, host: RegistryHost) -> httpx.Client:
        client = self._blob_clients.get(host)
        if client is None:
            options = self._client_options(host)
            # The body's bytes are what is hashed: a server must not compress them on the way.
            options["headers"] = {**options["headers"], "Accept-Encoding": "identity"}
            transport = ReadintoTransport(options["verify"], self._timeout)
            client = self._blob_clients[host] = httpx.Client(transport=transport, **options)
        return client

    # ---- requests with retries and auth -------------------------------------------------

    async def _send(
        self,
        session: _Session,
        method: str,
        url: str,
        headers: dict[str, str],
        what: str,
        *,
        blocking: bool = False,
    ) -> httpx.Response:
        """Sends with retries on transient failures and one auth round; returns a streaming response
        with a 2xx status (the caller closes it). A `blocking` request goes through the host's
        blocking client, in a thread: its body is then read from a thread too (open_blob_body)."""
        attempt = 0
        auth_tried = False
        while True:
            try:
                response = await self._transmit(session, method, url, headers, blocking=blocking)
            except httpx.TransportError as exc:
                attempt += 1
                await self._pause_unless_unreachable(session, what, attempt, exc)
                continue
            status = response.status_code
            if 200 <= status < 300:
                return response
            body = (await _error_body(response))[:512]
            if status == 401 and not auth_tried:
                auth_tried = True
                challenge = response.headers.get("www-authenticate", "")
                session.authorization = await self._authorize(session, challenge)
                continue
            if status in _TRANSIENT_STATUS:
                attempt += 1
                if await self.retry.pause(attempt):
                    continue
                raise Unavailable(
                    f"registry {session.host.display} kept failing for {what}: HTTP {status} after {attempt} "
                    f"attempts; try again later"
                )
            raise _refusal(session, what, status, body)

    async def _transmit(
        self, session: _Session, method: str, url: str, headers: dict[str, str], *, blocking: bool
    ) -> httpx.Response:
        """One request with the session's headers and authorization, answered as a stream."""
        req_headers = dict(session.headers)
        req_headers.update(headers)
        if session.authorization:
            req_headers["Authorization"] = session.authorization
        if blocking:
            blob_client = self._blob_client(session.host)
            return await _send_blocking(blob_client, blob_client.build_request(method, url, headers=req_headers))
        request = session.client.build_request(method, url, headers=req_headers)
        return await session.client.send(request, stream=True)

    async def _pause_unless_unreachable(
        self, session: _Session, what: str, attempt: int, exc: httpx.TransportError
    ) -> None:
        """Waits before the next attempt after a transport failure; raises Unavailable when the
        host does not resolve (no retry mends that) or the retries are spent."""
        if _is_name_resolution_failure(exc):
            raise Unavailable(
                f"cannot resolve registry host {session.host.netloc}: check the image name or the node's DNS ({exc})"
            ) from exc
        if not await self.retry.pause(attempt):
            raise Unavailable(
                f"registry {session.host.display} unreachable while fetching {what} after {attempt} attempts: {exc!r}"
            ) from exc

    async def _authorize(self, session: _Session, challenge: str) -> str:
        scheme, params = parse_challenge(challenge)
        creds = session.credentials
        registry = session.host.display
        if scheme == "basic":
            pair = creds.user_password() if creds else None
            if pair is None:
                raise PermissionDenied(f"registry {registry} requires a username and password (Basic auth)")
            return "Basic " + base64.b64encode(f"{pair[0]}:{pair[1]}".encode()).decode()
        if scheme != "bearer":
            raise PermissionDenied(f"registry {registry} asked for unsupported authentication {challenge!r}")
        if creds is not None and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        realm = params.get("realm")
        if not realm:
            raise PermissionDenied(f"registry {registry} sent a Bearer challenge without a realm")
        scope = params.get("scope") or f"repository:{session.repository}:pull"
        query: dict[str, str] = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        client = session.client
        try:
            if creds is not None and creds.identity_token:
                form = dict(query, grant_type="refresh_token", refresh_token=creds.identity_token, client_id="crishim")
                response = await client.post(realm, data=form)
            else:
                pair = creds.user_password() if creds else None
                auth = httpx.BasicAuth(*pair) if pair else None
                response = await client.get(realm, params=query, auth=auth)
        except httpx.TransportError as exc:
            raise Unavailable(f"token service {realm} of registry {registry} unreachable: {exc!r}") from exc
        if response.status_code in (401, 403):
            raise PermissionDenied(
                f"token service {realm} of registry {registry} refused the credentials (HTTP {response.status_code})"
            )
        if response.status_code >= 400:
            raise Unavailable(f"token service {realm} of registry {registry} failed: HTTP {response.status_code}")
        try:
            data = response.json()
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError) as exc:
            raise Unavailable(f"token service {realm} of registry {registry} sent no JSON") from exc
        if not isinstance(token, str) or not token:
            raise PermissionDenied(f"token service {realm} of registry {registry} returned no token")
        return f"Bearer {token}"

    # ---- manifests ------------------------------------------------------------------------

    def _new_session(self, host: RegistryHost, ref: Reference, credentials: Credentials | None) -> _Session:
        return _Session(
            host=host,
            client=self._client(host),
            repository=ref.path,
            credentials=credentials,
            headers=dict(host.headers),
        )

    async def _get_manifest(self, session: _Session, ref: Reference, obj: str) -> tuple[bytes, str, str]:
        url = f"{session.host.api_root}/{session.repository}/manifests/{obj}"
        response = await self._send(
            session,
            "GET",
            url,
            {"Accept": ACCEPT},
            f"manifest {ref.name}:{obj}" if not obj.startswith("sha256:") else f"manifest {ref.name}@{obj}",
        )
        try:
            raw = await _read_capped(response, MAX_MANIFEST_BYTES, f"manifest {ref}")
        except httpx.TransportError as exc:
            raise Unavailable(f"registry {session.host.display} dropped the manifest of {ref}: {exc!r}") from exc
        finally:
            await response.aclose()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if obj.startswith("sha256:") and digest != obj:
            raise DataLoss(f"manifest of {ref} from {session.host.display} has digest {digest}, expected {obj}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        return raw, digest, content_type

    @staticmethod
    def _media_type(raw: bytes, content_type: str, where: str) -> tuple[str, dict[str, Any]]:
        data = json_object(raw, f"{where}: the manifest")
        media_type = str(data.get("mediaType") or content_type)
        if data.get("schemaVersion") == 1 or media_type in DOCKER_SCHEMA1:
            raise Unimplemented(
                f"{where} is a Docker schema 1 manifest, which is deprecated and not supported: "
                "push the image again with a current Docker or buildah"
            )
        if media_type not in INDEX_TYPES + MANIFEST_TYPES:
            if "manifests" in data:
                media_type = OCI_INDEX
            elif "layers" in data and "config" in data:
                media_type = OCI_MANIFEST
            else:
                raise InvalidArgument(f"{where}: unsupported manifest media type {media_type!r}")
        return media_type, data

    async def resolve(self, ref: Reference, credentials: Credentials | None = None) -> tuple[Manifest, _Session]:
        """Finds the image manifest for this platform, trying mirrors in order and then the upstream."""
        hosts = load_hosts(ref.domain, self.config_dir)
        failures: list[str] = []
        last: ImageError | None = None
        for host in hosts:
            session = self._new_session(host, ref, credentials)
            try:
                return await self._resolve_on(session, ref), session
            except (Unavailable, NotFound, PermissionDenied) as exc:
                if not host.is_mirror:
                    if failures:
                        raise type(exc)(f"{exc} (mirrors failed first: {'; '.join(failures)})") from exc
                    raise
                log.info("mirror %s failed for %s: %s; trying the next host", host.display, ref, exc)
                failures.append(f"{host.display}: {exc}")
                last = exc
        assert last is not None
        raise last

    async def _resolve_on(self, session: _Session, ref: Reference) -> Manifest:
        raw, top_digest, content_type = await self._get_manifest(session, ref, ref.object)
        where = f"image {ref}"
        media_type, data = self._media_type(raw, content_type, where)
        digest = top_digest
        if media_type in INDEX_TYPES:
            chosen = select_from_index(data, where, self.platform)
            raw, digest, content_type = await self._get_manifest(session, ref, chosen.digest)
            media_type, data = self._media_type(raw, content_type, where)
            if media_type in INDEX_TYPES:
                raise InvalidArgument(f"{where}: an index inside an index is not supported")
        config, layers = parse_image_manifest(data, where)
        return Manifest(
            digest=digest, top_digest=top_digest, media_type=media_type, raw=raw, config=config, layers=layers
        )

    async def fetch_manifest(self, session: _Session, ref: Reference, obj: str) -> bytes:
        """The raw manifest or index `obj` (a tag or digest) of the session's repository
        (signature manifests, referrers indexes); NotFound when absent."""
        raw, _, _ = await self._get_manifest(session, ref, obj)
        return raw

    async def fetch_referrers(self, session: _Session, digest: str) -> bytes:
        """The OCI 1.1 referrers index of `digest`; NotFound when the registry lacks the API."""
        url = f"{session.host.api_root}/{session.repository}/referrers/{digest}"
        what = f"referrers of {session.repository}@{digest}"
        response = await self._send(session, "GET", url, {"Accept": OCI_INDEX}, what)
        try:
            return await _read_capped(response, MAX_MANIFEST_BYTES, what)
        except httpx.TransportError as exc:
            raise Unavailable(f"registry {session.host.display} dropped the {what}: {exc!r}") from exc
        finally:
            await response.aclose()

    # ---- blobs ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_blob(self, session: _Session, digest: str) -> AsyncIterator[httpx.Response]:
        """A response whose body is the blob; retries happen before the first byte only."""
        url = f"{session.host.api_root}/{session.repository}/blobs/{digest}"
        response = await self._send(session, "GET", url, {}, f"blob {digest} of {session.repository}")
        try:
            yield response
        finally:
            await response.aclose()

    @contextlib.asynccontextmanager
    async def open_blob_body(self, session: _Session, digest: str) -> AsyncIterator[httpx.Response]:
        """open_blob whose response belongs to a blocking client (over ReadintoTransport,
        blobtransport.py): its body is to be read in a thread (the response's `readinto`
        extension, or `iter_raw` through a proxy), where the socket reads, the hashing and the inflating of a layer
        all let go of the GIL, and the event loop is not woken per chunk. Auth, retries and
        redirects are open_blob's; the response is closed on exit."""
        url = f"{session.host.api_root}/{session.repository}/blobs/{digest}"
        response = await self._send(session, "GET", url, {}, f"blob {digest} of {session.repository}", blocking=True)
        try:
            yield response
        finally:
            response.close()

    async def fetch_blob(self, session: _Session, digest: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A small blob (an image config) read whole and verified."""
        failures = 0
        while True:
            try:
                async with self.open_blob(session, digest) as response:
                    data = await _read_capped(response, limit, f"blob {digest}")
                break
            except httpx.TransportError as exc:
                failures += 1
                if not await self.retry.pause(failures):
                    raise Unavailable(f"registry {session.host.display} dropped blob {digest}: {exc!r}") from exc
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DataLoss(f"blob from {session.host.display} has digest {actual}, expected {digest}")
        return data


def _refusal(session: _Session, what: str, status: int, body: bytes) -> ImageError:
    """The error for a final, non-2xx answer: credentials, a missing object, or a refusal."""
    registry = session.host.display
    if status in (401, 403):
        who = "anonymous access" if session.credentials is None else "the given credentials"
        return PermissionDenied(
            f"registry {registry} refused {who} for {what} (HTTP {status}): "
            f"check the pull secret / credentials for {session.host.netloc}"
        )
    if status == 404:
        return NotFound(f"{what} not found on registry {registry} (HTTP 404)")
    return InvalidArgument(
        f"registry {registry} rejected the request for {what}: HTTP {status} {body.decode(errors='replace')}"
    )


async def _send_blocking(client: httpx.Client, request: httpx.Request) -> httpx.Response:
    """Sends through a blocking client in a thread; on cancellation the thread is not waited
    for (it holds no files), and a response that still arrives is closed."""
    future = asyncio.ensure_future(asyncio.to_thread(client.send, request, stream=True))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_late)
        raise


def _close_late(future: asyncio.Future[httpx.Response]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


async def _error_body(response: httpx.Response) -> bytes:
    """The body of a refused request, for the message; the response is closed."""
    if isinstance(response.stream, httpx.AsyncByteStream):
        try:
            return await response.aread()
        finally:
            await response.aclose()

    def read() -> bytes:
        try:
            return response.read()
        finally:
            response.close()

    return await asyncio.to_thread(read)


async def _read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    """The whole body, refused (InvalidArgument) as soon as it grows past `limit` bytes."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_raw():
        total += len(chunk)
        if total > limit:
            raise InvalidArgument(f"{what} is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
