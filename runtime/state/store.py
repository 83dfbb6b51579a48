"""The state store: sandboxes and containers (and a few settings) in memory, SQLite behind.

`store.sandboxes` and `store.containers` are RecordTables (table.py): reads
and lists come from memory, as in containerd's and CRI-O's stores, because
the kubelet relists every second and a list must not query or decode
anything. Each change is one short transaction committed to SQLite before
memory changes, so the daemon never answers with something a kill -9 would
lose. The layout is schema.py's typed columns; an older database is upgraded
in place at open (migrate.py).

Durability: WAL with synchronous=NORMAL. Every committed change survives a
crash of the daemon (kill -9), the failure this store exists for; only a
power loss may drop the last transactions, and the reconcile at start-up
copes with that (runc state and conmon exit files are the truth for what ran).

Threads: SQLite stays on the event loop thread. Each change is one
single-row transaction of well under a millisecond on a WAL database, less
than handing it to a worker thread would cost, and running it inline keeps
the write and the in-memory change after it atomic with respect to every
other coroutine. The one other thread is the /metrics server's: it only
counts records by state (`count_states`), from memory, under the database
lock that every write also holds while it changes memory, and it never uses
the connection. Reads on the loop thread take no lock: only that thread
writes, so it cannot see a change half made.
"""

from __future__ import annotations

from pathlib import Path

from crishim.runtime.state.database import Database
from crishim.runtime.state.migrate import upgrade
from crishim.runtime.state.records import ContainerMeta, ContainerStatus, SandboxMeta, SandboxStatus
from crishim.runtime.state.schema import CONTAINERS, SANDBOXES
from crishim.runtime.state.schema import container_name_key as container_name_key
from crishim.runtime.state.schema import sandbox_name_key as sandbox_name_key
from crishim.runtime.state.table import RecordTable


class StateStore:
    """Sandboxes, containers and settings, loaded from `path` (created or upgraded if needed)."""

    def __init__(self, path: Path) -> None:
        self._db = Database(path)
        with self._db.lock:
            upgrade(self._db.connection)
            self._settings: dict[str, str] = dict(self._db.connection.execute("SELECT key, value FROM kv"))
        self.sandboxes: RecordTable[SandboxMeta, SandboxStatus] = RecordTable(self._db, SANDBOXES)
        self.containers: RecordTable[ContainerMeta, ContainerStatus] = RecordTable(self._db, CONTAINERS)

    def close(self) -> None:
        self._db.close()

    # -- small settings that must survive restarts (pod CIDR) ---------------
    def get_setting(self, key: str) -> str | None:
        return self._settings.get(key)

    def set_setting(self, key: str, value: str) -> None:
        with self._db.lock:
            with self._db.transaction() as sql:
                sql.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
            self._settings[key] = value
