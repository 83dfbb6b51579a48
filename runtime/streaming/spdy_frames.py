"""SPDY/3.1 frames: layouts, zlib-compressed header blocks (the SPDY/3 dictionary), encode/decode.

Frame layouts follow the SPDY Protocol Draft 3.1; spdy.py builds the multiplexed
connection on top.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Protocol

from crishim.runtime.streaming.errors import ProtocolError
from crishim.runtime.streaming.spdy_dictionary import HEADER_DICTIONARY

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

SETTINGS_INITIAL_WINDOW_SIZE = 7

# RST_STREAM status codes
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7

DEFAULT_WINDOW = 64 * 1024
MAX_DATA_CHUNK = 16 * 1024
MAX_FRAME_LENGTH = 1 << 24
MAX_HEADER_BLOCK = 256 * 1024

Headers = dict[str, list[str]]


class ByteSource(Protocol):
    """What the connection reads from: an asyncio.StreamReader, or a WebSocket tunnel."""

    async def read(self, n: int = -1) -> bytes: ...


class ByteSink(Protocol):
    """What the connection writes to: an asyncio.StreamWriter, or a WebSocket tunnel."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...

    async def wait_closed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DataFrame:
    stream_id: int
    flags: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SynStreamFrame:
    stream_id: int
    associated_id: int
    priority: int
    flags: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class SynReplyFrame:
    stream_id: int
    flags: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class RstStreamFrame:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class SettingsFrame:
    flags: int
    entries: tuple[tuple[int, int, int], ...]  # (flags, id, value)


@dataclass(frozen=True, slots=True)
class PingFrame:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    last_good_stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    flags: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class WindowUpdateFrame:
    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class UnknownControlFrame:
    frame_type: int
    flags: int
    payload: bytes


Frame = (
    DataFrame
    | SynStreamFrame
    | SynReplyFrame
    | RstStreamFrame
    | SettingsFrame
    | PingFrame
    | GoAwayFrame
    | HeadersFrame
    | WindowUpdateFrame
    | UnknownControlFrame
)


class HeaderCodec:
    """Header blocks of one direction share a single zlib stream primed with the dictionary."""

    def __init__(self) -> None:
        self._compress = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zdict=HEADER_DICTIONARY)
        self._decompress = zlib.decompressobj(15, zdict=HEADER_DICTIONARY)

    def encode(self, headers: Headers) -> bytes:
        parts = [struct.pack(">I", len(headers))]
        for name, values in headers.items():
            key = name.lower().encode()
            value = b"\0".join(v.encode() for v in values)
            parts += [struct.pack(">I", len(key)), key, struct.pack(">I", len(value)), value]
        block = b"".join(parts)
        return self._compress.compress(block) + self._compress.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, data: bytes) -> Headers:
        try:
            raw = self._decompress.decompress(data, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise ProtocolError(f"SPDY header block does not decompress: {exc}") from exc
        if self._decompress.unconsumed_tail:
            raise ProtocolError(f"SPDY header block larger than {MAX_HEADER_BLOCK} bytes")
        return parse_header_block(raw)


def parse_header_block(raw: bytes) -> Headers:
    """Decode an uncompressed name/value block; names are lowercased, values split at NUL."""
    try:
        (count,) = struct.unpack_from(">I", raw, 0)
        off = 4
        headers: Headers = {}
        for _ in range(count):
            (nlen,) = struct.unpack_from(">I", raw, off)
            name = raw[off + 4 : off + 4 + nlen]
            off += 4 + nlen
            (vlen,) = struct.unpack_from(">I", raw, off)
            value = raw[off + 4 : off + 4 + vlen]
            off += 4 + vlen
            if len(name) != nlen or len(value) != vlen or nlen == 0:
                raise ProtocolError("SPDY header block is truncated or has an empty name")
            headers.setdefault(name.decode("latin-1").lower(), []).extend(
                v.decode("latin-1") for v in value.split(b"\0")
            )
        return headers
    except struct.error as exc:
        raise ProtocolError("SPDY header block is truncated") from exc


def control_frame(frame_type: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, flags: int, data: bytes) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data


def encode_frame(frame: Frame, codec: HeaderCodec) -> bytes:
    """Serialize a frame; header blocks go through `codec`, so call in send order."""
    match frame:
        case DataFrame(stream_id, flags, data):
            return data_frame(stream_id, flags, data)
        case SynStreamFrame(stream_id, associated_id, priority, flags, headers):
            payload = struct.pack(">IIBB", stream_id, associated_id, (priority & 7) << 5, 0) + codec.encode(headers)
            return control_frame(SYN_STREAM, flags, payload)
        case SynReplyFrame(stream_id, flags, headers):
            return control_frame(SYN_REPLY, flags, struct.pack(">I", stream_id) + codec.encode(headers))
        case RstStreamFrame(stream_id, status):
            return control_frame(RST_STREAM, 0, struct.pack(">II", stream_id, status))
        case SettingsFrame(flags, entries):
            body = b"".join(struct.pack(">I", (f << 24) | i) + struct.pack(">I", v) for f, i, v in entries)
            return control_frame(SETTINGS, flags, struct.pack(">I", len(entries)) + body)
        case PingFrame(ping_id):
            return control_frame(PING, 0, struct.pack(">I", ping_id))
        case GoAwayFrame(last_good, status):
            return control_frame(GOAWAY, 0, struct.pack(">II", last_good, status))
        case HeadersFrame(stream_id, flags, headers):
            return control_frame(HEADERS, flags, struct.pack(">I", stream_id) + codec.encode(headers))
        case WindowUpdateFrame(stream_id, delta):
            return control_frame(WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))
        case UnknownControlFrame(frame_type, flags, payload):
            return control_frame(frame_type, flags, payload)
    raise TypeError(f"not a SPDY frame: {frame!r}")


def decode_frame(head: bytes, payload: bytes, codec: HeaderCodec) -> Frame:
    """Parse one frame from its 8-byte head and its payload."""
    first, second = struct.unpack(">II", head)
    flags = second >> 24
    if not first & 0x80000000:
        return DataFrame(first & 0x7FFFFFFF, flags, payload)
    version = (first >> 16) & 0x7FFF
    frame_type = first & 0xFFFF
    if version != VERSION:
        raise ProtocolError(f"unsupported SPDY version {version}; only SPDY/3.1 is spoken")
    try:
        if frame_type == SYN_STREAM:
            sid, assoc, pri, _slot = struct.unpack_from(">IIBB", payload)
            return SynStreamFrame(sid & 0x7FFFFFFF, assoc & 0x7FFFFFFF, pri >> 5, flags, codec.decode(payload[10:]))
        if frame_type == SYN_REPLY:
            (sid,) = struct.unpack_from(">I", payload)
            return SynReplyFrame(sid & 0x7FFFFFFF, flags, codec.decode(payload[4:]))
        if frame_type == RST_STREAM:
            sid, status = struct.unpack_from(">II", payload)
            return RstStreamFrame(sid & 0x7FFFFFFF, status)
        if frame_type == SETTINGS:
            (count,) = struct.unpack_from(">I", payload)
            entries = []
            for n in range(count):
                fid, value = struct.unpack_from(">II", payload, 4 + 8 * n)
                entries.append((fid >> 24, fid & 0xFFFFFF, value))
            return SettingsFrame(flags, tuple(entries))
        if frame_type == PING:
            (ping_id,) = struct.unpack_from(">I", payload)
            return PingFrame(ping_id)
        if frame_type == GOAWAY:
            last, status = (
                struct.unpack_from(">II", payload)
                if len(payload) >= 8
                else (
                    struct.unpack_from(">I", payload)[0],
                    0,
                )
            )
            return GoAwayFrame(last & 0x7FFFFFFF, status)
        if frame_type == HEADERS:
            (sid,) = struct.unpack_from(">I", payload)
            return HeadersFrame(sid & 0x7FFFFFFF, flags, codec.decode(payload[4:]))
        if frame_type == WINDOW_UPDATE:
            sid, delta = struct.unpack_from(">II", payload)
            return WindowUpdateFrame(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF)
    except struct.error as exc:
        raise ProtocolError(f"SPDY control frame type {frame_type} is truncated") from exc
    return UnknownControlFrame(frame_type, flags, payload)
