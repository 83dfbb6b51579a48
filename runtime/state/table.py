"""One kind of record (sandboxes or containers): all of them in memory, SQLite behind.

Reads and lists answer from the in-memory index and never touch SQLite or
decode anything: the kubelet relists every second. Every change is written to
SQLite first, in one transaction, and only then to memory, so what the daemon
answers is never ahead of what survives kill -9. The index is loaded once,
when the store opens.

Metadata is inserted and deleted, and changed only where a value is first known
after creation (`update_meta`: a restored container's pids); the status changes
only through `update_status(id, fn)`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Generic

from crishim.runtime.errors import AlreadyExists, NotFound
from crishim.runtime.state.database import Database
from crishim.runtime.state.records import M, Record, S
from crishim.runtime.state.schema import TableSpec


class RecordTable(Generic[M, S]):
    """The records of one kind; used from the event loop thread, except `count_states`."""

    def __init__(self, db: Database, spec: TableSpec[M, S]) -> None:
        self._db = db
        self._spec: TableSpec[M, S] = spec
        self._records: dict[str, Record[M, S]] = {}
        self._names: dict[str, str] = {}  # name key -> ID
        self._by_sandbox: dict[str, dict[str, None]] = {}  # sandbox ID -> container IDs, oldest first
        self._load()

    def _load(self) -> None:
        spec = self._spec
        split = len(spec.meta.columns)
        with self._db.lock:
            rows = self._db.connection.execute(spec.select_sql).fetchall()
        for row in rows:
            self._remember(Record(spec.meta.from_row(row[:split]), spec.status.from_row(row[split:])))

    def _remember(self, record: Record[M, S]) -> None:
        record_id = record.meta.id
        self._records[record_id] = record
        self._names[self._spec.name_key(record.meta)] = record_id
        if self._spec.sandbox_of is not None:
            self._by_sandbox.setdefault(self._spec.sandbox_of(record.meta), {})[record_id] = None

    def _forget(self, record: Record[M, S]) -> None:
        record_id = record.meta.id
        del self._records[record_id]
        self._names.pop(self._spec.name_key(record.meta), None)
        if self._spec.sandbox_of is not None:
            sandbox_id = self._spec.sandbox_of(record.meta)
            ids = self._by_sandbox.get(sandbox_id, {})
            ids.pop(record_id, None)
            if not ids:
                self._by_sandbox.pop(sandbox_id, None)

    # -- reads: memory only ------------------------------------------------------
    def get(self, record_id: str) -> Record[M, S]:
        record = self._records.get(record_id)
        if record is None:
            raise NotFound(f"{self._spec.kind} {record_id!r} not found")
        return record

    def find_by_name(self, name_key: str) -> Record[M, S] | None:
        record_id = self._names.get(name_key)
        return None if record_id is None else self._records[record_id]

    def all(self) -> list[Record[M, S]]:
        """Every record, oldest first."""
        return list(self._records.values())

    def in_sandbox(self, sandbox_id: str) -> list[Record[M, S]]:
        """The containers of one sandbox (TableSpec.sandbox_of), oldest first."""
        return [self._records[i] for i in self._by_sandbox.get(sandbox_id, ())]

    def ids_matching(self, prefix: str, limit: int = 2) -> list[str]:
        """The ID equal to `prefix` alone, else up to `limit` IDs starting with it."""
        if prefix in self._records:
            return [prefix]
        if not prefix:
            return []
        found: list[str] = []
        for record_id in self._records:
            if record_id.startswith(prefix):
                found.append(record_id)
                if len(found) == limit:
                    break
        return found

    def count_states(self) -> Counter[str]:
        """Records by status state; safe from any thread (the /metrics one)."""
        with self._db.lock:
            return Counter(r.status.state for r in self._records.values())

    # -- changes: SQLite first, then memory ---------------------------------------
    def add(self, meta: M, status: S) -> Record[M, S]:
        spec = self._spec
        holder = self._names.get(spec.name_key(meta))
        if holder is not None:
            raise AlreadyExists(spec.name_conflict(meta, holder))
        record = Record(meta, status)
        with self._db.lock:
            with self._db.transaction() as sql:
                sql.execute(spec.insert_meta_sql, (spec.name_key(meta), *spec.meta.to_row(meta)))
                sql.execute(spec.insert_status_sql, (meta.id, *spec.status.to_row(status)))
            self._remember(record)
        return record

    def update_status(self, record_id: str, fn: Callable[[S], S]) -> Record[M, S]:
        """Replaces the status with fn(status); the one way a status changes.

        Written only when a stored column changes (a field kept in memory alone,
        like ContainerStatus.starting, costs no write). Returns the record as it now is.
        """
        current = self.get(record_id)
        status = fn(current.status)
        if status is current.status:
            return current
        codec = self._spec.status
        record = Record(current.meta, status)
        with self._db.lock:
            row = codec.to_row(status)
            if row != codec.to_row(current.status):
                with self._db.transaction() as sql:
                    sql.execute(self._spec.update_status_sql, (*row, record_id))
            self._records[record_id] = record
        return record

    def update_meta(self, record_id: str, fn: Callable[[M], M]) -> Record[M, S]:
        """Replaces the metadata with fn(meta); only for what is known after creation.

        A container restored from a checkpoint gets its process (and conmon) only when
        StartContainer restores it. Its ID and name must not change: they key the tables.
        """
        current = self.get(record_id)
        meta = fn(current.meta)
        if meta.id != record_id or self._spec.name_key(meta) != self._spec.name_key(current.meta):
            raise ValueError(f"{self._spec.kind} {record_id}: the ID and name of a record do not change")
        spec, record = self._spec, Record(meta, current.status)
        columns = dict(zip(spec.meta.columns, spec.meta.to_row(meta), strict=True))
        with self._db.lock:
            with self._db.transaction() as sql:
                values = [v for c, v in columns.items() if c != "id"]
                sql.execute(spec.update_meta_sql, (*values, record_id))
            self._records[record_id] = record
        return record

    def delete(self, record_id: str) -> None:
        """Removes the record (its status row goes with it); an absent one is not an error."""
        record = self._records.get(record_id)
        with self._db.lock:
            with self._db.transaction() as sql:
                sql.execute(f"DELETE FROM {self._spec.meta_table} WHERE id = ?", (record_id,))
            if record is not None:
                self._forget(record)
