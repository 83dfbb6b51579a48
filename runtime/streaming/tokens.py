"""Single-use, short-lived tokens naming one streaming request.

The CRI Exec/Attach/PortForward calls store the request here and return a URL
carrying the token; the first HTTP request that presents it consumes it. Like
the kubelet's streaming request cache, a token lives one minute, so a leaked URL
is useless soon after and can never be replayed.
"""

from __future__ import annotations

import base64
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_TTL = 60.0
MAX_PENDING = 10_000


@dataclass(frozen=True, slots=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...] = ()


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest


class TokenCache:
    """Maps tokens to requests; `consume` returns a request at most once, and only before expiry."""

    def __init__(self, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def insert(self, request: StreamRequest) -> str:
        self._expire()
        if len(self._entries) >= MAX_PENDING:
            # Oldest first: they are the closest to expiring anyway.
            self._entries.popitem(last=False)
        token = _urlsafe_token(18)
        self._entries[token] = (self._clock() + self._ttl, request)
        return token

    def consume(self, token: str) -> StreamRequest | None:
        entry = self._entries.pop(token, None)
        if entry is None:
            return None
        deadline, request = entry
        if self._clock() >= deadline:
            return None
        return request

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            token, (deadline, _) = next(iter(self._entries.items()))
            if deadline > now:
                break
            del self._entries[token]


def _urlsafe_token(nbytes: int) -> str:
    """What secrets.token_urlsafe returns; secrets itself would load hmac, hashlib and libcrypto."""
    return base64.urlsafe_b64encode(os.urandom(nbytes)).rstrip(b"=").decode("ascii")
