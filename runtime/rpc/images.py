"""CRI ImageService: converts protobuf to plain values and calls crishim.images.ImageStore.

KEP-4216: every call works in the image set of `ImageSpec.runtime_handler`
(store.image_set maps handlers to sets; handlers without `separate_images`
share one). ListImages without a handler lists every set, each image carrying
the handler of its set in `spec.runtime_handler` ('' for the shared set), so
the kubelet can key images by (ID, handler) as the KEP does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from crishim.cri_api import api_pb2
from crishim.images.errors import NotFound
from crishim.images.manifest import Credentials
from crishim.images.records import ImageRecord
from crishim.images.store import ImageStore
from crishim.images.usage import tree_usage
from crishim.runtime import metrics
from crishim.runtime.boundary import cri_rpc
from crishim.runtime.rpc.unimplemented import fill_unimplemented

STREAM_CHUNK = 200  # images per StreamImagesResponse: well under the gRPC message limit


def credentials_from_auth(auth: api_pb2.AuthConfig) -> Credentials | None:
    """The CRI AuthConfig as plain Credentials; None when it carries nothing."""
    creds = Credentials(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )
    return None if creds == Credentials() else creds


def image_to_proto(record: ImageRecord) -> api_pb2.Image:
    image = api_pb2.Image(
        id=record.id,
        repo_tags=list(record.repo_tags),
        repo_digests=list(record.repo_digests),
        size=record.size,
        username=record.username,
        # The manifest's annotations: a client tells a checkpoint image by one (checkpoint_image.py).
        spec=api_pb2.ImageSpec(image=record.id, runtime_handler=record.image_set, annotations=record.annotations),
        pinned=record.pinned,
    )
    if record.uid is not None:
        image.uid.value = record.uid
    return image


def _usage(path: Path, timestamp: int) -> api_pb2.FilesystemUsage:
    used, inodes = tree_usage(path)
    return api_pb2.FilesystemUsage(
        timestamp=timestamp,
        fs_id=api_pb2.FilesystemIdentifier(mountpoint=str(path)),
        used_bytes=api_pb2.UInt64Value(value=used),
        inodes_used=api_pb2.UInt64Value(value=inodes),
    )


class ImageServicer:
    def __init__(self, store: ImageStore, containers_root: Path) -> None:
        self.store = store
        self.containers_root = containers_root

    def _matching(self, request_filter: api_pb2.ImageFilter | None) -> list[ImageRecord]:
        wanted = request_filter.image.image if request_filter is not None else ""
        handler = request_filter.image.runtime_handler if request_filter is not None else ""
        if not wanted:
            return self.store.list(self.store.image_set(handler) if handler else None)
        try:
            return [self.store.resolve(wanted, self.store.image_set(handler))]
        except NotFound:
            return []

    @cri_rpc
    async def ListImages(
        self, request: api_pb2.ListImagesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListImagesResponse:
        records = self._matching(request.filter if request.HasField("filter") else None)
        return api_pb2.ListImagesResponse(images=[image_to_proto(r) for r in records])

    @cri_rpc
    async def StreamImages(
        self, request: api_pb2.StreamImagesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.StreamImagesResponse]:
        records = self._matching(request.filter if request.HasField("filter") else None)
        for start in range(0, len(records), STREAM_CHUNK):
            chunk = records[start : start + STREAM_CHUNK]
            yield api_pb2.StreamImagesResponse(images=[image_to_proto(r) for r in chunk])

    @cri_rpc
    async def ImageStatus(
        self, request: api_pb2.ImageStatusRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ImageStatusResponse:
        image_set = self.store.image_set(request.image.runtime_handler)
        try:
            record = self.store.resolve(request.image.image, image_set)
        except NotFound:
            # api.proto: an absent image is an empty response, not an error.
            return api_pb2.ImageStatusResponse()
        response = api_pb2.ImageStatusResponse(image=image_to_proto(record))
        if request.verbose:
            response.info["info"] = json.dumps(
                {
                    "imageSpec": record.config,
                    "chainIDs": list(record.layers),
                    "manifestDigest": record.manifest_digest,
                    "pinned": record.pinned,
                    "imageSet": record.image_set,
                    "annotations": record.annotations,
                }
            )
        return response

    @cri_rpc
    async def PullImage(
        self, request: api_pb2.PullImageRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PullImageResponse:
        credentials = credentials_from_auth(request.auth) if request.HasField("auth") else None
        image_set = self.store.image_set(request.image.runtime_handler)
        # The pod's namespace chooses the image policy; it and the pod's annotations the download priority.
        sandbox = request.sandbox_config
        pull = self.store.pull(
            request.image.image,
            credentials,
            image_set=image_set,
            namespace=sandbox.metadata.namespace,
            annotations=dict(sandbox.annotations),
        )
        remaining = context.time_remaining()
        metrics.pull_started()
        started, ok, pulled_before = time.monotonic(), False, self.store.bytes_pulled_total
        try:
            if remaining is not None:
                # The call's deadline: the pull is cancelled (and undone) when it passes.
                record = await asyncio.wait_for(pull, timeout=max(remaining, 0.001))
            else:
                record = await pull
            ok = True
        finally:
            pulled = self.store.bytes_pulled_total - pulled_before
            metrics.pull_finished(pulled, time.monotonic() - started, ok)
        self._publish_usage()
        # image_ref is the image ID: the same value Image.id and ContainerStatus.image_id carry.
        return api_pb2.PullImageResponse(image_ref=record.id)

    @cri_rpc
    async def RemoveImage(
        self, request: api_pb2.RemoveImageRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RemoveImageResponse:
        # api.proto: removing an absent image is not an error; store.remove ignores it.
        await self.store.remove(request.image.image, self.store.image_set(request.image.runtime_handler))
        self._publish_usage()
        return api_pb2.RemoveImageResponse()

    def _publish_usage(self) -> None:
        """The image store's size for /metrics (images' compressed sizes, as ListImages reports)."""
        if metrics.enabled():
            metrics.set_image_store_usage(sum(r.size for r in self.store.list(None)))

    @cri_rpc
    async def ImageFsInfo(
        self, request: api_pb2.ImageFsInfoRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ImageFsInfoResponse:
        # KEP-4191: both lists are always filled, also when the two roots share a disk.
        now = time.time_ns()
        image_fs, container_fs = await asyncio.gather(
            asyncio.to_thread(_usage, self.store.root, now),
            asyncio.to_thread(_usage, self.containers_root, now),
        )
        return api_pb2.ImageFsInfoResponse(image_filesystems=[image_fs], container_filesystems=[container_fs])


fill_unimplemented(ImageServicer, "ImageService")
