"""Brings a state database to the current schema (schema.py), in one transaction.

Version 0 (user_version 0, the layout of crishim before schema versions) kept
each sandbox and container as one JSON document in a `data` column, its CRI
config hex-encoded. An upgraded daemon with pods running must keep them, so
their records are moved into the typed tables, field by field; a field the
document lacks takes its default, a key the records no longer have is
dropped. Version 1 lacks container_status.restore_pending, added with its
default. Version 2 lacks sandboxes.infra_container and namespace_paths: every
pod so far has an infra container. A crash midway rolls the whole upgrade back and the next start redoes it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from crishim.runtime.state.records import M, S
from crishim.runtime.state.schema import CONTAINERS, SANDBOXES, SCHEMA, SCHEMA_VERSION, TableSpec

log = logging.getLogger("crishim.state")


class NewerSchema(RuntimeError):
    """The database was written by a newer crishim: reading it could lose what it stores."""


def upgrade(db: sqlite3.Connection) -> None:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise NewerSchema(
            f"the state database has schema version {version}, newer than this crishim's {SCHEMA_VERSION}: "
            "run the crishim that wrote it, or move the database away to start empty"
        )
    db.execute("BEGIN IMMEDIATE")
    try:
        if version == 1:  # 2 adds one column; every container so far was started, not restored
            db.execute("ALTER TABLE container_status ADD COLUMN restore_pending INTEGER NOT NULL DEFAULT 0")
        if version in (1, 2):  # 3: every pod so far has a pause process and pins nothing
            db.execute("ALTER TABLE sandboxes ADD COLUMN infra_container INTEGER NOT NULL DEFAULT 1")
            db.execute("ALTER TABLE sandboxes ADD COLUMN namespace_paths TEXT NOT NULL DEFAULT '{}'")
        json_layout = _has_json_layout(db)
        if json_layout:
            db.execute("ALTER TABLE sandboxes RENAME TO v0_sandboxes")
            db.execute("ALTER TABLE containers RENAME TO v0_containers")
            db.execute("DROP INDEX IF EXISTS containers_by_sandbox")
        for statement in SCHEMA:
            db.execute(statement)
        if json_layout:
            moved = _copy_json_records(db, "v0_sandboxes", SANDBOXES)
            moved += _copy_json_records(db, "v0_containers", CONTAINERS)
            db.execute("DROP TABLE v0_sandboxes")
            db.execute("DROP TABLE v0_containers")
            log.info("state database moved from schema 0 (JSON records) to %d: %d records", SCHEMA_VERSION, moved)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _has_json_layout(db: sqlite3.Connection) -> bool:
    columns = {row[1] for row in db.execute("PRAGMA table_info(sandboxes)")}
    return "data" in columns


def _copy_json_records(db: sqlite3.Connection, old_table: str, spec: TableSpec[M, S]) -> int:
    rows = db.execute(f"SELECT data FROM {old_table} ORDER BY rowid").fetchall()
    for (text,) in rows:
        meta, status = _split_json_record(text, spec)
        db.execute(spec.insert_meta_sql, (spec.name_key(meta), *spec.meta.to_row(meta)))
        db.execute(spec.insert_status_sql, (meta.id, *spec.status.to_row(status)))
    return len(rows)


def _split_json_record(text: str, spec: TableSpec[M, S]) -> tuple[M, S]:
    """A version 0 document (every field in one JSON object) as metadata and status."""
    data: dict[str, Any] = json.loads(text)
    data["config"] = bytes.fromhex(data["config"])
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    meta_cls, status_cls = spec.meta.record_type, spec.status.record_type
    meta = meta_cls(**{name: values[name] for name in spec.meta.columns if name in values})
    status = status_cls(**{name: values[name] for name in spec.status.columns if name in values})
    return meta, status
