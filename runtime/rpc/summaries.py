"""List answers put together from items serialized once per record, not built at every list.

The kubelet relists every second. With 500 containers, building 500
`Container` messages and copying them into the response costs several
milliseconds per call; parsing the same items from their wire bytes, joined,
costs a fraction of that. A Record (runtime/state/records.py) never changes
and a status change makes a new one, so the bytes of the item built from a
record stay right for as long as that Record lives: they are cached weakly,
keyed by the record, and forgotten with it. For the same reason a list of
the very same Record objects as the last one asked gets the last answer
again: the kubelet's relist of a node where nothing changed costs a filter.
`Remembered` does the same for one status message (ContainerStatus, and the
container statuses PodSandboxStatus carries), which the relist asks for each
container it saw.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from crishim.runtime.rpc.filters import chunks
from google.protobuf.message import Message

R = TypeVar("R")
T = TypeVar("T", bound=Message)

_LENGTH_DELIMITED = 2  # the wire type of an embedded message


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


class Remembered(Generic[R, T]):
    """build(record), built once per record object and forgotten with it.

    The message is shared by every caller: it is copied into an answer (a field
    assignment or CopyFrom), never changed.
    """

    def __init__(self, build: Callable[[R], T]) -> None:
        self._build = build
        self._built: weakref.WeakKeyDictionary[R, T] = weakref.WeakKeyDictionary()

    def __call__(self, record: R) -> T:
        message = self._built.get(record)
        if message is None:
            message = self._built[record] = self._build(record)
        return message


class ListItems(Generic[R]):
    """build(record) in wire form, remembered while the record object lives."""

    def __init__(self, build: Callable[[R], Message]) -> None:
        self._build = build
        self._wire: weakref.WeakKeyDictionary[R, bytes] = weakref.WeakKeyDictionary()
        # Response type -> the records of its last answer (held, so their identities stay theirs), the answer.
        self._last: dict[type[Any], tuple[list[R], Any]] = {}

    def _item(self, record: R) -> bytes:
        """The item's length prefix and bytes: a field of any response once its tag is put in front."""
        wire = self._wire.get(record)
        if wire is None:
            payload = self._build(record).SerializeToString()
            wire = self._wire[record] = _varint(len(payload)) + payload
        return wire

    def response(self, cls: type[T], field: str, records: Sequence[R]) -> T:
        """A `cls` whose repeated message `field` holds the items of `records`, in their order.

        The answer may be the one returned last time: it is shared, never to be changed.
        """
        last = self._last.get(cls)
        if last is not None and last[0] == records:  # Records compare by identity
            same: T = last[1]
            return same
        items = [self._item(r) for r in records]
        tag = _varint(cls.DESCRIPTOR.fields_by_name[field].number << 3 | _LENGTH_DELIMITED)
        answer: T = cls.FromString(tag + tag.join(items)) if items else cls()
        self._last[cls] = (list(records), answer)
        return answer

    def batches(self, cls: type[T], field: str, records: Sequence[R]) -> Iterator[T]:
        """The answers of a Stream* RPC: `response` over chunks of `records` small enough to send."""
        for batch in chunks(records):
            yield self.response(cls, field, batch)
