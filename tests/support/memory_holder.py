"""A container process holding 101 MiB of known bytes in its own memory, and asked to prove them.

Shared by tests/integration/test_checkpoint_memory.py and scripts/bench-checkpoint, so the
test and the benchmark checkpoint the same process. The bytes are `seq 1 13000000`'s output
(105,888,897 bytes, no two pages alike), which busybox sh reads into a shell variable:
anonymous memory of the container's first process, with no file behind it (a file would
travel in the rootfs diff, not in CRIU's page images). The shell then waits; touching
/sum.want makes it write the md5 of the variable to /sum, computed by the process itself
from its memory, so a restored process answers from the pages CRIU brought back. The
expected digest is computed here from the same sequence, independently of the container.
"""

from __future__ import annotations

import functools
import hashlib

SEQ_END = 13_000_000
READY_FILE = "/ready"
# The shell checks for a request twice a second; each check forks a `sleep` of a 101 MiB process.
HOLDER = (
    f"x=$(seq 1 {SEQ_END}); touch {READY_FILE}; "
    "while :; do "
    'if [ -e /sum.want ]; then rm -f /sum.want; echo "$x" | md5sum > /sum.new; mv /sum.new /sum; fi; '
    "sleep 0.5; done"
)
COMMAND = ["sh", "-c", HOLDER]
IS_READY = ["test", "-e", READY_FILE]
# A request replaces any earlier answer (a restored container has its checkpoint's /sum in its layer).
ASK_DIGEST = ["sh", "-c", "rm -f /sum; touch /sum.want"]
READ_DIGEST = ["cat", "/sum"]


@functools.cache
def held_bytes() -> int:
    """How many bytes the shell variable holds (seq's output, whose last newline $(...) drops, echo adds back)."""
    total, digits, low = 0, 1, 1
    while low <= SEQ_END:
        high = min(SEQ_END, 10**digits - 1)
        total += (high - low + 1) * (digits + 1)
        low, digits = 10**digits, digits + 1
    return total


@functools.cache
def expected_md5() -> str:
    """The md5 of `seq 1 SEQ_END`'s output, what md5sum of the held bytes prints."""
    digest = hashlib.md5(usedforsecurity=False)
    step = 500_000
    for low in range(1, SEQ_END + 1, step):
        digest.update("".join(f"{n}\n" for n in range(low, min(low + step, SEQ_END + 1))).encode())
    return digest.hexdigest()


def parse_digest(answer: str) -> str:
    """md5sum's line ("<hex>  -") to the hex digest; "" for an answer not yet written."""
    fields = answer.split()
    return fields[0] if fields and len(fields[0]) == 32 else ""
