"""Token cache: single use and expiry."""

from __future__ import annotations

import json

from crishim.runtime.streaming.streams import Pipe, TerminalSize, resize_events
from crishim.runtime.streaming.tokens import ExecRequest, PortForwardRequest, TokenCache


def test_token_is_single_use() -> None:
    cache = TokenCache()
    req = ExecRequest("c", ("ls",), False, False, True, True)
    token = cache.insert(req)
    assert cache.consume(token) == req
    assert cache.consume(token) is None


def test_token_expires_after_ttl() -> None:
    now = [100.0]
    cache = TokenCache(ttl=60, clock=lambda: now[0])
    token = cache.insert(PortForwardRequest("s"))
    other = cache.insert(PortForwardRequest("t"))
    now[0] += 59.9
    assert cache.consume(other) == PortForwardRequest("t")
    now[0] += 0.2
    assert cache.consume(token) is None
    assert len(cache) == 0


def test_tokens_are_unguessable_and_distinct() -> None:
    cache = TokenCache()
    tokens = {cache.insert(PortForwardRequest("s")) for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 24 for t in tokens)


async def test_resize_events_decode_split_and_joined_json() -> None:
    pipe = Pipe()
    first = json.dumps({"Width": 80, "Height": 24}).encode()
    pipe.feed_nowait(first[:7])
    pipe.feed_nowait(first[7:] + b'{"Width":120,"Height":40}\n{"Width":-1,"Height":3}')
    pipe.close_nowait()
    sizes = [size async for size in resize_events(pipe)]
    assert sizes == [TerminalSize(80, 24), TerminalSize(120, 40)]
