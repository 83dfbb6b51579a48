"""Registry faults against a tiny misbehaving registry of our own: each gives a clear error and
leaves no image, blob or layer directory behind."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from crishim.images import build as b
from crishim.images.errors import DataLoss, DeadlineExceeded, InvalidArgument, Unavailable, Unimplemented
from crishim.images.registry import RegistryClient
from crishim.images.store import ImageStore

pytestmark = pytest.mark.root


@dataclass
class FakeRegistry:
    """Serves one image at /v2/app/...; `blob_mode` decides how layer blobs misbehave."""

    image: b.BuiltImage
    blob_mode: str = "ok"  # ok | 503 | 503-once | reset | reset-once | corrupt | stall
    manifest_override: bytes | None = None
    blob_requests: int = 0
    server: asyncio.AbstractServer | None = None
    port: int = 0
    layer_digests: set[str] = field(default_factory=set)

    async def start(self) -> None:
        self.layer_digests = {layer.digest for layer in self.image.layers}
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.server.close_clients() if hasattr(self.server, "close_clients") else None

    @property
    def ref(self) -> str:
        return f"127.0.0.1:{self.port}/app:1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                if not await self._respond(path, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went away, or the test ended
        finally:
            writer.close()

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        ctype: str = "",
        length: int | None = None,
    ) -> None:
        headers = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body) if length is None else length}\r\n"
        if ctype:
            headers += f"Content-Type: {ctype}\r\n"
        writer.write(headers.encode() + b"\r\n" + body)
        await writer.drain()

    async def _respond(self, path: str, writer: asyncio.StreamWriter) -> bool:
        image = self.image
        if "/manifests/" in path:
            manifest = self.manifest_override or image.manifest
            await self._send(writer, 200, manifest, image.media_type)
            return True
        digest = path.rsplit("/", 1)[1]
        if digest == image.config_digest:
            await self._send(writer, 200, image.config)
            return True
        layer = next((lyr for lyr in image.layers if lyr.digest == digest), None)
        if layer is None:
            await self._send(writer, 404, b"{}")
            return True
        self.blob_requests += 1
        mode = self.blob_mode
        if mode == "503" or (mode == "503-once" and self.blob_requests == 1):
            await self._send(writer, 503, b"busy")
            return True
        if mode == "reset" or (mode == "reset-once" and self.blob_requests == 1):
            await self._send(writer, 200, layer.data[: len(layer.data) // 2], length=len(layer.data))
            return False
        if mode == "corrupt":
            data = bytearray(layer.data)
            data[-20] ^= 0xFF
            await self._send(writer, 200, bytes(data))
            return True
        if mode == "stall":
            await self._send(writer, 200, layer.data[:1000], length=len(layer.data))
            await asyncio.sleep(3600)
        await self._send(writer, 200, layer.data)
        return True


def leftovers(store: ImageStore) -> list[str]:
    """Everything that would count as a partial result."""
    found = [p.name for p in (store.root / "tmp").iterdir()]
    found += [p.name for p in (store.root / "blobs" / "sha256").iterdir()]
    found += [p.name for p in store.layers_dir.iterdir()]
    found += [r.id for r in store.list()]
    return found


def big_image() -> b.BuiltImage:
    return b.build_image([[b.regular("data", hashlib.sha256(b"x").digest() * 40000)], [b.regular("more", b"more\n")]])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ImageStore]:
    registry = RegistryClient(None, retries=2, backoff=0.01)
    s = ImageStore(tmp_path / "images", None, registry=registry, sync_layers=False, pull_progress_timeout=1.0)
    yield s
    await s.aclose()


async def serve(image: b.BuiltImage, mode: str = "ok", manifest: bytes | None = None) -> FakeRegistry:
    fake = FakeRegistry(image, mode, manifest)
    await fake.start()
    return fake


async def test_transient_failures_are_retried(store: ImageStore) -> None:
    for mode in ("503-once", "reset-once"):
        fake = await serve(big_image(), mode)
        try:
            record = await store.pull(fake.ref)
            assert record.id == fake.image.config_digest
            await store.remove(record.id)
        finally:
            await fake.stop()


@pytest.mark.parametrize("mode", ["503", "reset"])
async def test_persistent_failures_are_unavailable_and_leave_nothing(store: ImageStore, mode: str) -> None:
    fake = await serve(big_image(), mode)
    try:
        with pytest.raises(Unavailable, match=f"127.0.0.1:{fake.port}"):
            await store.pull(fake.ref)
        assert fake.blob_requests >= 3
        assert leftovers(store) == []
    finally:
        await fake.stop()


async def test_digest_mismatch_is_data_loss_and_leaves_nothing(store: ImageStore) -> None:
    fake = await serve(big_image(), "corrupt")
    try:
        with pytest.raises(DataLoss):
            await store.pull(fake.ref)
        assert leftovers(store) == []
    finally:
        await fake.stop()


async def test_stalled_pull_is_cancelled_after_the_progress_timeout(store: ImageStore) -> None:
    fake = await serve(big_image(), "stall")
    try:
        with pytest.raises(DeadlineExceeded, match="no data"):
            await store.pull(fake.ref)
        assert leftovers(store) == []
    finally:
        await fake.stop()


async def test_cancelled_pull_leaves_nothing(store: ImageStore) -> None:
    store.pull_progress_timeout = 60
    fake = await serve(big_image(), "stall")
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.pull(fake.ref), 0.5)
        assert store.puller.pulls_in_flight == 0
        assert leftovers(store) == []
    finally:
        await fake.stop()


def raw_layer(add: list[tuple[str, bytes]]) -> b.LayerBlob:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in add:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    blob = gzip.compress(raw)
    return b.LayerBlob(blob, b.sha256_digest(blob), b.sha256_digest(raw), b.OCI_LAYER + "+gzip")


async def test_layer_escaping_its_root_is_refused(store: ImageStore, tmp_path: Path) -> None:
    image = b.build_image([[b.regular("ok", b"ok")], raw_layer([("../../escaped", b"evil")])])
    fake = await serve(image)
    try:
        with pytest.raises(InvalidArgument, match="'..'"):
            await store.pull(fake.ref)
        assert leftovers(store) == []
        assert not [p for p in tmp_path.parent.iterdir() if p.name == "escaped"]
        assert not [p for p in (tmp_path / "images").iterdir() if p.name == "escaped"]
    finally:
        await fake.stop()


async def test_truncated_layer_is_refused(store: ImageStore) -> None:
    good = big_image()
    layer = good.layers[0]
    cut = b.LayerBlob(layer.data[: len(layer.data) // 2], "", layer.diff_id, layer.media_type)
    cut = b.LayerBlob(cut.data, b.sha256_digest(cut.data), layer.diff_id, layer.media_type)
    image = b.build_image([cut, good.layers[1]])
    fake = await serve(image)
    try:
        with pytest.raises(DataLoss, match="truncated"):
            await store.pull(fake.ref)
        assert leftovers(store) == []
    finally:
        await fake.stop()


async def test_schema1_manifest_is_refused_clearly(store: ImageStore) -> None:
    schema1 = b'{"schemaVersion": 1, "name": "app", "tag": "1", "fsLayers": []}'
    fake = await serve(big_image(), manifest=schema1)
    try:
        with pytest.raises(Unimplemented, match="schema 1"):
            await store.pull(fake.ref)
    finally:
        await fake.stop()
