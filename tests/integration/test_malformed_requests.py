"""Requests whose bytes are not the method's message are refused with INVALID_ARGUMENT.

The bytes go over a raw channel (no client-side serializer), so what reaches
the daemon is exactly what a broken or hostile client sends: random bytes,
truncated and bit-flipped messages, strings with bad UTF-8, lengths past the
end of the buffer, deep group nesting and oversize fields, spread over all 43
CRI methods. No answer may be UNKNOWN or INTERNAL, and the daemon stays up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from crishim.cri_api import api_pb2 as pb
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.cri import container_config, run_pod, start_container
from tests.support.daemon import Daemon, remove_all_pods

pytestmark = pytest.mark.root

METHODS: list[MethodDescriptor] = [
    method for service in pb.DESCRIPTOR.services_by_name.values() for method in service.methods
]
BAD_UTF8 = b"\xff\xfe\xc3\x28"
# A call that decodes may do real work (a GetContainerEvents stream never ends by itself).
CALL_TIMEOUT = 5.0


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _seed(method: MethodDescriptor) -> bytes:
    """A small valid request: every top-level string field set, so mutations have structure to break."""
    message = getattr(pb, method.input_type.name)()
    for field in method.input_type.fields:
        if field.type == field.TYPE_STRING and not field.is_repeated:
            setattr(message, field.name, "abc")
    return bytes(message.SerializeToString())


def _bad_utf8_string(field: int) -> bytes:
    return _tag(field, 2) + _varint(len(BAD_UTF8)) + BAD_UTF8


def _length_past_end(field: int) -> bytes:
    return _tag(field, 2) + _varint(1 << 30) + b"short"


def _deep_groups(depth: int) -> bytes:
    return _tag(99, 3) * depth + _tag(99, 4) * depth


def _truncated_varint(field: int) -> bytes:
    return _tag(field, 0) + b"\xff" * 11


def _flip(seed: bytes, index: int, mask: int) -> bytes:
    if not seed:
        return bytes([mask])
    data = bytearray(seed)
    data[index % len(data)] ^= mask or 1
    return bytes(data)


fields = st.integers(min_value=1, max_value=20)
PAYLOADS = st.one_of(
    st.binary(min_size=1, max_size=300),
    fields.map(_bad_utf8_string),
    fields.map(_length_past_end),
    st.integers(min_value=50, max_value=5000).map(_deep_groups),
    fields.map(_truncated_varint),
    st.tuples(fields, st.integers(0, 7)).map(lambda f: _tag(*f)),  # a tag with no value
)


@st.composite
def malformed_calls(draw: st.DrawFn) -> tuple[MethodDescriptor, bytes]:
    method = draw(st.sampled_from(METHODS))
    seed = _seed(method)
    how = draw(st.sampled_from(["payload", "append", "truncate", "flip"]))
    if how == "payload":
        return method, draw(PAYLOADS)
    if how == "append":
        return method, seed + draw(PAYLOADS)
    if how == "truncate":
        return method, seed[: draw(st.integers(0, max(0, len(seed) - 1)))] + b"\x0a"
    return method, _flip(seed, draw(st.integers(0, 1000)), draw(st.integers(0, 255)))


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _call(channel: grpc.Channel, method: MethodDescriptor, payload: bytes) -> tuple[grpc.StatusCode, str]:
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(_path(method))(payload, timeout=CALL_TIMEOUT):
                pass
        else:
            channel.unary_unary(_path(method))(payload, timeout=CALL_TIMEOUT)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture(scope="module")
def raw_channel(live_daemon: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix://{live_daemon.socket}") as channel:
        yield channel
    remove_all_pods(live_daemon)


def test_every_method_names_its_message_when_the_bytes_do_not_decode(live_daemon: Daemon, raw_channel) -> None:
    assert len(METHODS) == 43
    for method in METHODS:
        code, details = _call(raw_channel, method, _bad_utf8_string(1) + _length_past_end(2))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{method.name}: {code} {details}"
        assert f"runtime.v1.{method.input_type.name}" in details, details
        assert "well-formed" in details, details


@pytest.mark.timeout(1800)  # 5000 calls: about 80 s on the host, ten times that under emulation
@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
@given(malformed_calls())
def test_malformed_requests_are_never_unknown_or_internal(live_daemon: Daemon, raw_channel, call) -> None:
    method, payload = call
    assert_answered(live_daemon, raw_channel, method, payload, repr(payload))


def assert_answered(
    daemon: Daemon, channel: grpc.Channel, method: MethodDescriptor, payload: bytes, shown: str
) -> None:
    """Answered with a code that names the fault (no UNKNOWN, no INTERNAL), and the daemon lives."""
    code, details = _call(channel, method, payload)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), f"{method.name}({shown}): {details}"
    assert daemon.proc is not None
    assert daemon.proc.poll() is None


# -- well-formed but hostile: every field of every message filled from its descriptor --------
SCALARS = {
    "string": st.one_of(st.text(max_size=12), st.sampled_from(["..", "/", "../../etc", "a" * 300, "\x00", "-1", "*"])),
    "bytes": st.binary(max_size=16),
    "bool": st.booleans(),
    "int": st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 2**31 - 1])),
    "int64": st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 2**63 - 1])),
    "uint": st.integers(0, 2**32 - 1),
    "uint64": st.integers(0, 2**64 - 1),
    "float": st.floats(allow_nan=True, allow_infinity=True, width=32),
    "double": st.floats(allow_nan=True, allow_infinity=True),
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == field.TYPE_STRING:
        return SCALARS["string"]
    if t == field.TYPE_BYTES:
        return SCALARS["bytes"]
    if t == field.TYPE_BOOL:
        return SCALARS["bool"]
    if t == field.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-3, 99))
    if t in (field.TYPE_INT64, field.TYPE_SINT64, field.TYPE_SFIXED64):
        return SCALARS["int64"]
    if t in (field.TYPE_UINT64, field.TYPE_FIXED64):
        return SCALARS["uint64"]
    if t in (field.TYPE_UINT32, field.TYPE_FIXED32):
        return SCALARS["uint"]
    if t == field.TYPE_FLOAT:
        return SCALARS["float"]
    if t == field.TYPE_DOUBLE:
        return SCALARS["double"]
    return SCALARS["int"]


@st.composite
def filled(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """A message of `descriptor` with a random subset of its fields set to hostile values."""
    message: Message = getattr(pb, descriptor.name)() if descriptor.containing_type is None else _new(descriptor)
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            if value.message_type is not None:
                continue
            entries = draw(st.dictionaries(_scalar(key), _scalar(value), max_size=3))
            getattr(message, field.name).update(entries)
        elif field.message_type is not None:
            if depth >= 4:
                continue
            items = draw(st.lists(filled(field.message_type, depth + 1), min_size=1, max_size=2))
            if field.is_repeated:
                getattr(message, field.name).extend(items)
            else:
                getattr(message, field.name).CopyFrom(items[0])
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def _new(descriptor: Descriptor) -> Message:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)()


@st.composite
def hostile_calls(draw: st.DrawFn) -> tuple[MethodDescriptor, bytes]:
    method = draw(st.sampled_from(METHODS))
    return method, draw(filled(method.input_type)).SerializeToString()


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_calls())
def test_well_formed_hostile_requests_are_never_unknown_or_internal(live_daemon: Daemon, raw_channel, call) -> None:
    method, payload = call
    assert_answered(live_daemon, raw_channel, method, payload, "...")


# -- hostile requests aimed at a real pod and container ----------------------------------------
# Methods that take a sandbox or container ID and leave both in place, so every example hits a
# live target (a random ID stops at NOT_FOUND before any of the interesting code runs).
TARGETABLE = {
    "CreateContainer",
    "UpdateContainerResources",
    "UpdatePodSandboxResources",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStatus",
    "PodSandboxStatus",
    "ContainerStats",
    "PodSandboxStats",
    "ReopenContainerLog",
    "CheckpointContainer",
    "ListContainers",
    "ListPodSandbox",
    "ListContainerStats",
    "ListPodSandboxStats",
}


class Target:
    """A pod and a running container for hostile requests to aim at, replaced if a request ends them.

    A request may legitimately end the container (a memory limit below its usage has the
    kernel kill it on cgroup v2); the next example then gets a fresh one.
    """

    def __init__(self, daemon: Daemon, image: str) -> None:
        self.daemon, self.image, self.started = daemon, image, 0
        self.sandbox_id, self.pod = run_pod(daemon, "fuzz-target")
        self.container_id = self._start()

    def _start(self) -> str:
        self.started += 1
        config = container_config(f"app{self.started}", self.image, ["sleep", "3600"])
        return start_container(self.daemon, self.sandbox_id, self.pod, config)

    def ensure_running(self) -> tuple[str, str]:
        status = self.daemon.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=self.container_id), timeout=30
        )
        if status.status.state != pb.CONTAINER_RUNNING:
            self.container_id = self._start()
        return self.sandbox_id, self.container_id


@pytest.fixture(scope="module")
def target(live_daemon: Daemon, busybox: str) -> Target:
    return Target(live_daemon, busybox)


def _aim(message: Message, sandbox_id: str, container_id: str) -> None:
    """Points every sandbox and container ID field, at any depth, at the live target."""
    for field, value in message.ListFields():
        if field.message_type is not None and not field.is_repeated:
            _aim(value, sandbox_id, container_id)
    for name, real in (("pod_sandbox_id", sandbox_id), ("container_id", container_id), ("id", container_id)):
        field = message.DESCRIPTOR.fields_by_name.get(name)
        if field is not None and field.type == field.TYPE_STRING and not field.is_repeated:
            setattr(message, name, real)


@st.composite
def aimed_calls(draw: st.DrawFn) -> tuple[MethodDescriptor, Message]:
    method = draw(st.sampled_from([m for m in METHODS if m.name in TARGETABLE]))
    return method, draw(filled(method.input_type))


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(aimed_calls())
def test_hostile_requests_at_a_live_pod_are_never_unknown_or_internal(
    live_daemon: Daemon, raw_channel, target, call
) -> None:
    method, message = call
    _aim(message, *target.ensure_running())
    assert_answered(live_daemon, raw_channel, method, message.SerializeToString(), str(message))
