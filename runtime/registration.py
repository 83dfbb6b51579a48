"""Registers the CRI services on the gRPC server, decoding requests inside the error boundary.

grpcio's generated `add_*Servicer_to_server` hands each request's bytes to the
message's `FromString` before any of our code runs; a corrupt request (bad
UTF-8 in a string field, a truncated varint, a length past the buffer) then
fails inside grpcio and reaches the client as UNKNOWN with an opaque message.
Here every method is registered from the service descriptor with the raw bytes
as its request, and parsed by us: a request that does not decode is answered
INVALID_ARGUMENT naming the message type and the fault, and is counted by the
metrics like any other call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from crishim.cri_api import api_pb2
from crishim.runtime.boundary import reject
from crishim.runtime.errors import InvalidArgument
from google.protobuf import message as pb_message
from google.protobuf.descriptor import MethodDescriptor

RUNTIME_SERVICE = "runtime.v1.RuntimeService"
IMAGE_SERVICE = "runtime.v1.ImageService"


def _message_class(descriptor: Any) -> type[pb_message.Message]:
    cls: type[pb_message.Message] = getattr(api_pb2, descriptor.name)
    return cls


def decode(method: MethodDescriptor, raw: bytes) -> pb_message.Message:
    """The request as its message type, or InvalidArgument saying why it is not one."""
    cls = _message_class(method.input_type)
    try:
        request = cls.FromString(raw)
    except (pb_message.DecodeError, RecursionError, ValueError) as exc:
        raise InvalidArgument(
            f"{method.name}: the request is not a valid runtime.v1.{cls.__name__} "
            f"({len(raw)} bytes): {exc}; send a well-formed protobuf message"
        ) from exc
    # A NUL can only be in a string if a zero byte is in the wire bytes: the walk is rare.
    if b"\x00" in raw:
        field = nul_string_field(request)
        if field is not None:
            raise InvalidArgument(
                f"{method.name}: {field} holds a NUL character; no path, name, argument or label "
                "the kernel or the runtime takes can contain one"
            )
    return request


def nul_string_field(message: pb_message.Message, prefix: str = "") -> str | None:
    """The dotted path of the first string (or map key/value) in `message` holding a NUL, if any."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    return f"{path} key {key!r}"
                found = _nul_in_value(item, f"{path}[{key!r}]")
                if found:
                    return found
        elif field.is_repeated:
            for index, item in enumerate(value):
                found = _nul_in_value(item, f"{path}[{index}]")
                if found:
                    return found
        else:
            found = _nul_in_value(value, path)
            if found:
                return found
    return None


def _nul_in_value(value: object, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, pb_message.Message):
        return nul_string_field(value, path + ".")
    return None


def _serialize(response: pb_message.Message) -> bytes:
    return bytes(response.SerializeToString())


def _unary_handler(method: MethodDescriptor, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = decode(method, raw)
        except InvalidArgument as exc:
            await reject(method.name, context, exc)
        return await behaviour(request, context)

    return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None, response_serializer=_serialize)


def _stream_handler(method: MethodDescriptor, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            request = decode(method, raw)
        except InvalidArgument as exc:
            await reject(method.name, context, exc)
        async for item in behaviour(request, context):
            yield item

    return grpc.unary_stream_rpc_method_handler(handle, request_deserializer=None, response_serializer=_serialize)


def service_handler(service_name: str, servicer: object) -> grpc.GenericRpcHandler:
    """Every method of `service_name`, bound to `servicer`'s method of the same name."""
    service = api_pb2.DESCRIPTOR.services_by_name[service_name.rsplit(".", 1)[-1]]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        if method.client_streaming:
            raise ValueError(f"{service_name}/{method.name}: client streaming is not part of CRI")
        behaviour = getattr(servicer, method.name)
        make = _stream_handler if method.server_streaming else _unary_handler
        handlers[method.name] = make(method, behaviour)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def add_cri_services(server: grpc.aio.Server, runtime: object, images: object) -> None:
    server.add_generic_rpc_handlers((service_handler(RUNTIME_SERVICE, runtime), service_handler(IMAGE_SERVICE, images)))
