"""SQLite store of sandbox and container records.

One table per kind, the record as JSON plus the columns that queries filter on.
WAL with synchronous=NORMAL: every committed change survives a crash of the
daemon (kill -9), which is the failure this store exists for; only a power loss
may drop the last transactions, and the reconcile at start-up copes with that
(runc state and conmon exit files are the truth for what ran).
Calls are short single-row transactions, so they run on the event loop thread.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crishim.runtime.errors import AlreadyExists, NotFound
from crishim.runtime.state.records import ContainerMeta, SandboxMeta, decode, encode

SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    name_key TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    name_key TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS containers_by_sandbox ON containers(sandbox_id);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def sandbox_name_key(name: str, namespace: str, uid: str, attempt: int) -> str:
    """The name the kubelet makes unique per sandbox (as `crictl pods --name` shows)."""
    return f"k8s_{name}_{namespace}_{uid}_{attempt}"


def container_name_key(sandbox_id: str, name: str, attempt: int) -> str:
    return f"{sandbox_id}/{name}_{attempt}"


class StateStore:
    """Sandboxes and containers, one transaction per change."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # Reads take the lock too: the /metrics thread lists containers and sandboxes while the
    # event loop may be inside a transaction on this same connection.
    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- sandboxes -------------------------------------------------------
    def add_sandbox(self, meta: SandboxMeta) -> None:
        key = sandbox_name_key(meta.name, meta.namespace, meta.uid, meta.attempt)
        with self._tx() as db:
            row = db.execute("SELECT id FROM sandboxes WHERE name_key = ?", (key,)).fetchone()
            if row:
                raise AlreadyExists(
                    f"pod sandbox name {key!r} is already used by sandbox {row[0]}; "
                    "remove it first or use another attempt number"
                )
            db.execute("INSERT INTO sandboxes VALUES (?, ?, ?)", (meta.id, key, encode(meta)))

    def get_sandbox(self, sandbox_id: str) -> SandboxMeta:
        row = self._one("SELECT data FROM sandboxes WHERE id = ?", (sandbox_id,))
        if row is None:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return decode(SandboxMeta, row[0])

    def find_sandbox_by_name(self, key: str) -> SandboxMeta | None:
        row = self._one("SELECT data FROM sandboxes WHERE name_key = ?", (key,))
        return decode(SandboxMeta, row[0]) if row else None

    def list_sandboxes(self) -> list[SandboxMeta]:
        rows = self._all("SELECT data FROM sandboxes")
        return [decode(SandboxMeta, r[0]) for r in rows]

    def update_sandbox(self, sandbox_id: str, fn: Callable[[SandboxMeta], SandboxMeta]) -> SandboxMeta:
        with self._tx() as db:
            row = db.execute("SELECT data FROM sandboxes WHERE id = ?", (sandbox_id,)).fetchone()
            if row is None:
                raise NotFound(f"pod sandbox {sandbox_id!r} not found")
            new = fn(decode(SandboxMeta, row[0]))
            db.execute("UPDATE sandboxes SET data = ? WHERE id = ?", (encode(new), sandbox_id))
            return new

    def set_sandbox(self, sandbox_id: str, **changes: object) -> SandboxMeta:
        return self.update_sandbox(sandbox_id, lambda m: dataclasses.replace(m, **changes))  # type: ignore[arg-type]

    def delete_sandbox(self, sandbox_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    # -- containers ------------------------------------------------------
    def add_container(self, meta: ContainerMeta) -> None:
        key = container_name_key(meta.sandbox_id, meta.name, meta.attempt)
        with self._tx() as db:
            row = db.execute("SELECT id FROM containers WHERE name_key = ?", (key,)).fetchone()
            if row:
                raise AlreadyExists(
                    f"container {meta.name!r} attempt {meta.attempt} already exists in sandbox "
                    f"{meta.sandbox_id} as {row[0]}; remove it or use another attempt number"
                )
            db.execute("INSERT INTO containers VALUES (?, ?, ?, ?)", (meta.id, meta.sandbox_id, key, encode(meta)))

    def get_container(self, container_id: str) -> ContainerMeta:
        row = self._one("SELECT data FROM containers WHERE id = ?", (container_id,))
        if row is None:
            raise NotFound(f"container {container_id!r} not found")
        return decode(ContainerMeta, row[0])

    def list_containers(self, sandbox_id: str | None = None) -> list[ContainerMeta]:
        if sandbox_id is None:
            rows = self._all("SELECT data FROM containers")
        else:
            rows = self._all("SELECT data FROM containers WHERE sandbox_id = ?", (sandbox_id,))
        return [decode(ContainerMeta, r[0]) for r in rows]

    def update_container(self, container_id: str, fn: Callable[[ContainerMeta], ContainerMeta]) -> ContainerMeta:
        with self._tx() as db:
            row = db.execute("SELECT data FROM containers WHERE id = ?", (container_id,)).fetchone()
            if row is None:
                raise NotFound(f"container {container_id!r} not found")
            new = fn(decode(ContainerMeta, row[0]))
            db.execute("UPDATE containers SET data = ? WHERE id = ?", (encode(new), container_id))
            return new

    def set_container(self, container_id: str, **changes: object) -> ContainerMeta:
        return self.update_container(container_id, lambda m: dataclasses.replace(m, **changes))  # type: ignore[arg-type]

    def delete_container(self, container_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    # -- ID lookups (every CRI call resolves one: no record is decoded) ----------
    def ids_matching(self, table: str, prefix: str, limit: int = 2) -> list[str]:
        """IDs equal to `prefix` first, else those starting with it (up to `limit`)."""
        if table not in ("sandboxes", "containers"):
            raise ValueError(table)
        exact = self._one(f"SELECT id FROM {table} WHERE id = ?", (prefix,))
        if exact:
            return [exact[0]]
        if not prefix:
            return []
        rows = self._all(f"SELECT id FROM {table} WHERE substr(id, 1, ?) = ? LIMIT ?", (len(prefix), prefix, limit))
        return [r[0] for r in rows]

    # -- small settings that must survive restarts (pod CIDR) ---------------
    def get_setting(self, key: str) -> str | None:
        row = self._one("SELECT value FROM kv WHERE key = ?", (key,))
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
