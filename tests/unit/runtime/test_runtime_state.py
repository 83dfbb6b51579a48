"""ID lookups in the state store: exact IDs, unique prefixes, ambiguity."""

from __future__ import annotations

from pathlib import Path

import pytest
from crishim.runtime.errors import InvalidArgument, NotFound
from crishim.runtime.services import _resolve
from crishim.runtime.state.records import SANDBOX_READY, SandboxMeta
from crishim.runtime.state.store import StateStore


def sandbox(sid: str, name: str) -> SandboxMeta:
    return SandboxMeta(id=sid, name=name, namespace="ns", uid="u", attempt=0, state=SANDBOX_READY,
                       created_at=1, runtime_handler="runc", config=b"", bundle="/b")  # fmt: skip


def test_exact_ids_prefixes_and_ambiguity(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.add_sandbox(sandbox("abc123", "one"))
    store.add_sandbox(sandbox("abd456", "two"))
    store.add_sandbox(sandbox("abc", "three"))

    def resolve(wanted: str) -> str:
        return _resolve(wanted, store.ids_matching("sandboxes", wanted), "pod sandbox", False)

    assert resolve("abc") == "abc"  # an exact ID wins over the longer one it prefixes
    assert resolve("abc1") == "abc123"
    assert resolve("abd") == "abd456"
    with pytest.raises(InvalidArgument, match="ambiguous"):
        resolve("ab")
    with pytest.raises(NotFound):
        resolve("ABC")  # IDs are case-sensitive
    with pytest.raises(NotFound):
        resolve("")
    assert _resolve("zz", store.ids_matching("sandboxes", "zz"), "pod sandbox", True) == "zz"
    store.close()
