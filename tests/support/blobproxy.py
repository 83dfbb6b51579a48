"""A counting, throttling HTTP proxy in front of the test registry.

Pulls go to the proxy's `host` instead of the registry's; it forwards every request to
the real registry and counts the layer blob downloads in flight (`peak` is the most at
once), sending each layer's bytes in slices with a pause between them, so a pull of a
few MB lasts long enough for a test to act while it runs. It serves the test process's
own event loop (pulls made with an ImageStore in the test).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

SLICE = 64 * 1024


@dataclass
class BlobProxy:
    upstream: str  # the registry's URL, "http://127.0.0.1:PORT"
    counted: set[str] = field(default_factory=set)  # layer digests whose downloads are counted
    pause: float = 0.002  # seconds between slices of a counted blob
    active: int = 0
    peak: int = 0
    served: list[str] = field(default_factory=list)  # counted digests, in the order they finished
    host: str = ""
    _server: asyncio.AbstractServer | None = None
    _client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=60)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.host = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._client is not None:
            await self._client.aclose()

    def ref(self, registry_ref: str) -> str:
        """The same reference, through the proxy."""
        return self.host + "/" + registry_ref.split("/", 1)[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path, _ = head[0].split(" ", 2)
                headers = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
                await self._forward(method, path, headers, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _forward(self, method: str, path: str, headers: dict[str, str], writer: asyncio.StreamWriter) -> None:
        assert self._client is not None
        wanted = {k: v for k, v in headers.items() if k.lower() in ("accept", "authorization", "range")}
        request = self._client.build_request(method, path, headers=wanted)
        response = await self._client.send(request, stream=True, follow_redirects=True)
        try:
            digest = path.rsplit("/", 1)[-1]
            counted = method == "GET" and "/blobs/" in path and digest in self.counted
            out = [f"HTTP/1.1 {response.status_code} X"]
            for key in ("content-type", "content-length", "docker-content-digest", "www-authenticate"):
                if key in response.headers:
                    out.append(f"{key}: {response.headers[key]}")
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            if method == "HEAD":
                await writer.drain()
                return
            async with self._counting(digest) if counted else contextlib.nullcontext():
                # One slice behind the upstream, so that the last is sent with no pause after it:
                # the blob counts as served the moment its last byte is out, not a pause later,
                # by when a quick client may have finished its pull.
                held: bytes | None = None
                async for chunk in response.aiter_raw(SLICE):
                    if held is not None:
                        writer.write(held)
                        await writer.drain()
                        if counted:
                            await asyncio.sleep(self.pause)
                    held = chunk
                if held is not None:
                    writer.write(held)
                    await writer.drain()
        finally:
            await response.aclose()

    @contextlib.asynccontextmanager
    async def _counting(self, digest: str) -> AsyncIterator[None]:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            yield
        finally:
            self.active -= 1
            self.served.append(digest)
