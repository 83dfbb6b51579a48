"""The SQLite layout of the state store: typed columns, one per record field.

Schema version 3 (PRAGMA user_version; 2 added container_status.restore_pending, 3 the
sandboxes' infra_container and namespace_paths). Each kind has two tables: the
metadata, inserted once and deleted with the record, and the status, the only
rows ever updated; the status row is small, so a state change rewrites a few
columns, not the serialized config. Maps and lists (labels, annotations,
additional IPs, image volumes) are JSON text columns; the CRI config the
kubelet sent is kept verbatim as a BLOB. Version 0, the layout before this one,
stored each record as one JSON document: migrate.py moves it to this one.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from crishim.runtime.state.records import (
    ContainerMeta,
    ContainerStatus,
    M,
    S,
    SandboxMeta,
    SandboxStatus,
)

SCHEMA_VERSION = 3

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS sandboxes (
        id TEXT PRIMARY KEY,
        name_key TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        namespace TEXT NOT NULL,
        uid TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        runtime_handler TEXT NOT NULL,
        config BLOB NOT NULL,
        bundle TEXT NOT NULL,
        log_directory TEXT NOT NULL,
        netns_path TEXT NOT NULL,
        ip TEXT NOT NULL,
        additional_ips TEXT NOT NULL,
        pid INTEGER NOT NULL,
        conmon_pid INTEGER NOT NULL,
        cgroup_parent TEXT NOT NULL,
        cgroups_path TEXT NOT NULL,
        shm_path TEXT NOT NULL,
        userns INTEGER NOT NULL,
        labels TEXT NOT NULL,
        annotations TEXT NOT NULL,
        infra_container INTEGER NOT NULL,
        namespace_paths TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS sandbox_status (
        id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
        state TEXT NOT NULL,
        network_torn_down INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS containers (
        id TEXT PRIMARY KEY,
        name_key TEXT NOT NULL UNIQUE,
        sandbox_id TEXT NOT NULL,
        name TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        config BLOB NOT NULL,
        image TEXT NOT NULL,
        image_id TEXT NOT NULL,
        image_ref TEXT NOT NULL,
        bundle TEXT NOT NULL,
        rootfs TEXT NOT NULL,
        runtime_handler TEXT NOT NULL,
        log_path TEXT NOT NULL,
        pid INTEGER NOT NULL,
        conmon_pid INTEGER NOT NULL,
        cgroups_path TEXT NOT NULL,
        tty INTEGER NOT NULL,
        stdin INTEGER NOT NULL,
        stdin_once INTEGER NOT NULL,
        user TEXT NOT NULL,
        image_volumes TEXT NOT NULL,
        mounts TEXT NOT NULL,
        labels TEXT NOT NULL,
        annotations TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS containers_by_sandbox ON containers(sandbox_id)",
    """CREATE TABLE IF NOT EXISTS container_status (
        id TEXT PRIMARY KEY REFERENCES containers(id) ON DELETE CASCADE,
        state TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        exit_code INTEGER NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        resources TEXT NOT NULL,
        restore_pending INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
)

T = TypeVar("T")


def _codec(hint: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """(to SQL, from SQL) for one field type; str, int and bytes map to themselves."""
    origin = typing.get_origin(hint) or hint
    if origin is dict:
        return (lambda v: json.dumps(v, separators=(",", ":"))), json.loads
    if origin is tuple:
        return (lambda v: json.dumps(list(v), separators=(",", ":"))), (lambda v: tuple(json.loads(v)))
    if origin is bool:
        return int, bool
    return (lambda v: v), (lambda v: v)


class RowCodec(Generic[T]):
    """A record dataclass <-> the values of its columns, named after its stored fields."""

    def __init__(self, cls: type[T]) -> None:
        hints = typing.get_type_hints(cls)
        self.record_type = cls
        self.columns = tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("stored", True))  # type: ignore[arg-type]
        codecs = [_codec(hints[name]) for name in self.columns]
        self._to_sql = tuple(c[0] for c in codecs)
        self._from_sql = tuple(c[1] for c in codecs)

    def to_row(self, value: T) -> tuple[Any, ...]:
        return tuple(enc(getattr(value, name)) for name, enc in zip(self.columns, self._to_sql, strict=True))

    def from_row(self, row: Sequence[Any]) -> T:
        return self.record_type(**{n: dec(v) for n, dec, v in zip(self.columns, self._from_sql, row, strict=True)})


@dataclass(frozen=True)
class TableSpec(Generic[M, S]):
    """One kind of record: its tables, columns, unique name and how it is grouped."""

    kind: str  # "pod sandbox", "container": as messages name it
    meta_table: str
    status_table: str
    meta: RowCodec[M]
    status: RowCodec[S]
    name_key: Callable[[M], str]
    name_conflict: Callable[[M, str], str]  # (new record, the ID holding its name) -> message
    sandbox_of: Callable[[M], str] | None = None  # containers: the sandbox they are listed under

    @property
    def insert_meta_sql(self) -> str:
        columns = ("name_key", *self.meta.columns)
        return f"INSERT INTO {self.meta_table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"

    @property
    def insert_status_sql(self) -> str:
        columns = ("id", *self.status.columns)
        return f"INSERT INTO {self.status_table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"

    @property
    def update_status_sql(self) -> str:
        assignments = ", ".join(f"{c} = ?" for c in self.status.columns)
        return f"UPDATE {self.status_table} SET {assignments} WHERE id = ?"

    @property
    def update_meta_sql(self) -> str:
        assignments = ", ".join(f"{c} = ?" for c in self.meta.columns if c != "id")
        return f"UPDATE {self.meta_table} SET {assignments} WHERE id = ?"

    @property
    def select_sql(self) -> str:
        """Every record, metadata columns then status columns, in the order they were added."""
        columns = [f"m.{c}" for c in self.meta.columns] + [f"s.{c}" for c in self.status.columns]
        return (
            f"SELECT {', '.join(columns)} FROM {self.meta_table} m "
            f"JOIN {self.status_table} s ON s.id = m.id ORDER BY m.rowid"
        )


def sandbox_name_key(name: str, namespace: str, uid: str, attempt: int) -> str:
    """The name the kubelet makes unique per sandbox (as `crictl pods --name` shows)."""
    return f"k8s_{name}_{namespace}_{uid}_{attempt}"


def container_name_key(sandbox_id: str, name: str, attempt: int) -> str:
    return f"{sandbox_id}/{name}_{attempt}"


SANDBOXES: TableSpec[SandboxMeta, SandboxStatus] = TableSpec(
    kind="pod sandbox",
    meta_table="sandboxes",
    status_table="sandbox_status",
    meta=RowCodec(SandboxMeta),
    status=RowCodec(SandboxStatus),
    name_key=lambda m: sandbox_name_key(m.name, m.namespace, m.uid, m.attempt),
    name_conflict=lambda m, holder: (
        f"pod sandbox name {sandbox_name_key(m.name, m.namespace, m.uid, m.attempt)!r} is already used by "
        f"sandbox {holder}; remove it first or use another attempt number"
    ),
)

CONTAINERS: TableSpec[ContainerMeta, ContainerStatus] = TableSpec(
    kind="container",
    meta_table="containers",
    status_table="container_status",
    meta=RowCodec(ContainerMeta),
    status=RowCodec(ContainerStatus),
    name_key=lambda m: container_name_key(m.sandbox_id, m.name, m.attempt),
    name_conflict=lambda m, holder: (
        f"container {m.name!r} attempt {m.attempt} already exists in sandbox {m.sandbox_id} as {holder}; "
        "remove it or use another attempt number"
    ),
    sandbox_of=lambda m: m.sandbox_id,
)
