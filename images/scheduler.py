"""The node-wide bound on layer downloads, shared fairly between pulls.

A node has one link to its registries. With a plain semaphore the first pull to queue
its layers takes every slot until it is done, so a three-layer image asked for a second
later waits behind all sixty layers of a big one. Here every pull holds a `PullTicket`;
a freed slot goes to the waiting layer whose pull

1. has the best priority class (a kube-system pod, or one annotated
   `crishim.io/pull-priority: high`, before an ordinary pod, before a background pre-fetch);
2. within that class, was served least recently (round-robin between pulls, not FIFO
   by layer): a pull just starting gets the next slot, and two long pulls alternate.

A layer download that several pulls share carries all their tickets (`DownloadClaim`):
it is served at the best priority among them, so a high-priority pull joining a layer
a background pull queued does not wait at the background pull's place.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PRIORITY_ANNOTATION = "crishim.io/pull-priority"


class Priority(enum.IntEnum):
    """Lower is served first."""

    HIGH = 0
    NORMAL = 1
    BACKGROUND = 2  # pre-fetch: never ahead of a pod waiting for its image


def pull_priority(namespace: str, annotations: Mapping[str, str], priority_namespaces: Iterable[str]) -> Priority:
    """HIGH for a pod of a priority namespace or one whose sandbox asks for it, else NORMAL."""
    if annotations.get(PRIORITY_ANNOTATION, "").strip().lower() == "high":
        return Priority.HIGH
    if namespace and namespace in priority_namespaces:
        return Priority.HIGH
    return Priority.NORMAL


_turns = itertools.count(1)


@dataclass(eq=False, slots=True)
class PullTicket:
    """One pull's place in the download queue; `last_turn` is when it was last given a slot."""

    name: str
    priority: Priority = Priority.NORMAL
    last_turn: int = 0  # 0: never served, so a new pull goes before those already served

    def raise_to(self, priority: Priority) -> None:
        """A caller of better priority joined this pull: it is served at that priority from now."""
        self.priority = min(self.priority, priority)


@dataclass(eq=False, slots=True)
class DownloadClaim:
    """One layer download waiting for a slot, and the pulls that want it."""

    tickets: list[PullTicket]
    arrival: int = field(default_factory=lambda: next(_turns))

    def join(self, ticket: PullTicket) -> None:
        if all(t is not ticket for t in self.tickets):
            self.tickets.append(ticket)

    def lead(self) -> PullTicket:
        """The ticket the claim is served under: its best priority, then its least recently served."""
        return min(self.tickets, key=lambda t: (t.priority, t.last_turn))


class DownloadScheduler:
    """At most `limit` layer downloads at once; slots handed out as the module docstring says."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.active = 0
        self.peak = 0  # the most downloads ever running at once, for tests and the curious
        self._waiting: dict[DownloadClaim, asyncio.Future[None]] = {}

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self, claim: DownloadClaim) -> None:
        """Waits for a slot; the caller must `release` it when its download ends."""
        if self.active < self.limit and not self._waiting:
            self._take(claim)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[claim] = future
        try:
            await future
        except asyncio.CancelledError:
            if self._waiting.pop(claim, None) is None and not future.cancelled():
                self.release()  # granted, then cancelled before it ran: pass the slot on
            raise

    def release(self) -> None:
        self.active -= 1
        while self.active < self.limit and self._waiting:
            claim = min(self._waiting, key=_order)
            future = self._waiting.pop(claim)
            if future.done():  # its task was cancelled meanwhile; acquire cleans up
                continue
            self._take(claim)
            future.set_result(None)

    def _take(self, claim: DownloadClaim) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        claim.lead().last_turn = next(_turns)


def _order(claim: DownloadClaim) -> tuple[int, int, int]:
    lead = claim.lead()
    return (lead.priority, lead.last_turn, claim.arrival)
