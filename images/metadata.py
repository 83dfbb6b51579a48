"""Image and layer metadata in SQLite (`<image_store>/images.db`, WAL).

Tables:
  images(id, config, manifest_digest, manifest, size, pinned, created, removed)
  names(name, image_id, kind)            -- repo tags ('tag') and repo digests ('digest')
  layers(chain_id, diff_id, blob_digest, blob_size, size, inodes)
  image_layers(image_id, position, chain_id)  -- a layer's reference count is its row count here
  leases(holder, image_id)               -- containers / image volumes using an image

An image whose names were removed while leased stays (flag `removed`) so its
layers stay on disk; releasing the last lease deletes it. Every change is one
transaction; the connection is shared between threads under a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    size INTEGER NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('tag', 'digest'))
);
CREATE INDEX IF NOT EXISTS names_by_image ON names(image_id);
CREATE TABLE IF NOT EXISTS layers (
    chain_id TEXT PRIMARY KEY,
    diff_id TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    blob_size INTEGER NOT NULL,
    size INTEGER NOT NULL,
    inodes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS image_layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    chain_id TEXT NOT NULL REFERENCES layers(chain_id),
    PRIMARY KEY (image_id, position)
);
CREATE INDEX IF NOT EXISTS image_layers_by_layer ON image_layers(chain_id);
CREATE TABLE IF NOT EXISTS leases (
    holder TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id)
);
"""


@dataclass(frozen=True, slots=True)
class LayerRow:
    chain_id: str
    diff_id: str
    blob_digest: str
    blob_size: int
    size: int
    inodes: int


@dataclass(frozen=True, slots=True)
class ImageRow:
    id: str
    config: dict[str, Any]
    manifest_digest: str
    size: int
    pinned: bool
    created: float
    removed: bool
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    layers: tuple[str, ...]
    lease_holders: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Garbage:
    """What a metadata change left unreferenced: the caller deletes these files after the commit."""

    layers: tuple[LayerRow, ...] = ()
    blobs: tuple[str, ...] = ()


class Metadata:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

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

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ---- layers ---------------------------------------------------------------------------

    def layer(self, chain_id: str) -> LayerRow | None:
        rows = self._query("SELECT * FROM layers WHERE chain_id = ?", (chain_id,))
        return LayerRow(**dict(rows[0])) if rows else None

    def add_layer(self, layer: LayerRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO layers VALUES (?, ?, ?, ?, ?, ?)",
                (layer.chain_id, layer.diff_id, layer.blob_digest, layer.blob_size, layer.size, layer.inodes),
            )

    def layer_refcount(self, chain_id: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM image_layers WHERE chain_id = ?", (chain_id,))
        return int(rows[0][0])

    def delete_layer(self, chain_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM layers WHERE chain_id = ? AND NOT EXISTS "
                "(SELECT 1 FROM image_layers WHERE chain_id = ?)",
                (chain_id, chain_id),
            )

    def blob_in_use(self, digest: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM layers WHERE blob_digest = ? UNION ALL SELECT 1 FROM images WHERE id = ? LIMIT 1",
            (digest, digest),
        )
        return bool(rows)

    def all_layers(self) -> list[LayerRow]:
        return [LayerRow(**dict(r)) for r in self._query("SELECT * FROM layers")]

    # ---- images ---------------------------------------------------------------------------

    def _image_row(self, row: sqlite3.Row) -> ImageRow:
        image_id = row["id"]
        names = self._query("SELECT name, kind FROM names WHERE image_id = ? ORDER BY name", (image_id,))
        layers = self._query(
            "SELECT chain_id FROM image_layers WHERE image_id = ? ORDER BY position", (image_id,)
        )
        holders = self._query("SELECT holder FROM leases WHERE image_id = ? ORDER BY holder", (image_id,))
        return ImageRow(
            id=image_id,
            config=json.loads(row["config"]),
            manifest_digest=row["manifest_digest"],
            size=row["size"],
            pinned=bool(row["pinned"]),
            created=row["created"],
            removed=bool(row["removed"]),
            repo_tags=tuple(n["name"] for n in names if n["kind"] == "tag"),
            repo_digests=tuple(n["name"] for n in names if n["kind"] == "digest"),
            layers=tuple(r["chain_id"] for r in layers),
            lease_holders=tuple(h["holder"] for h in holders),
        )

    def image(self, image_id: str, *, include_removed: bool = False) -> ImageRow | None:
        rows = self._query("SELECT * FROM images WHERE id = ?", (image_id,))
        if not rows or (rows[0]["removed"] and not include_removed):
            return None
        return self._image_row(rows[0])

    def images(self) -> list[ImageRow]:
        return [
            self._image_row(r) for r in self._query("SELECT * FROM images WHERE removed = 0 ORDER BY created")
        ]

    def image_ids_with_prefix(self, prefix: str) -> list[str]:
        rows = self._query(
            "SELECT id FROM images WHERE removed = 0 AND substr(id, 1, ?) = ?", (len(prefix), prefix)
        )
        return [r["id"] for r in rows]

    def image_by_name(self, name: str) -> str | None:
        rows = self._query(
            "SELECT n.image_id FROM names n JOIN images i ON i.id = n.image_id "
            "WHERE n.name = ? AND i.removed = 0",
            (name,),
        )
        return rows[0]["image_id"] if rows else None

    def record_image(
        self,
        *,
        image_id: str,
        config: dict[str, Any],
        manifest_digest: str,
        manifest: bytes,
        size: int,
        layers: list[str],
        tags: list[str],
        digests: list[str],
        pinned: bool | None = None,
    ) -> None:
        """Adds or refreshes an image and points `tags`/`digests` at it (moving a tag from another image).

        An image left without names by a moved tag stays listed by ID, as dangling images do elsewhere.
        """
        with self._tx() as db:
            existing = db.execute("SELECT id FROM images WHERE id = ?", (image_id,)).fetchone()
            if existing is None:
                db.execute(
                    "INSERT INTO images (id, config, manifest_digest, manifest, size, pinned, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        image_id,
                        json.dumps(config),
                        manifest_digest,
                        manifest.decode(),
                        size,
                        int(bool(pinned)),
                        time.time(),
                    ),
                )
                db.executemany(
                    "INSERT INTO image_layers VALUES (?, ?, ?)",
                    [(image_id, i, chain) for i, chain in enumerate(layers)],
                )
            else:
                db.execute("UPDATE images SET removed = 0 WHERE id = ?", (image_id,))
                if pinned is not None:
                    db.execute("UPDATE images SET pinned = ? WHERE id = ?", (int(pinned), image_id))
            for name, kind in [(t, "tag") for t in tags] + [(d, "digest") for d in digests]:
                db.execute("INSERT OR REPLACE INTO names VALUES (?, ?, ?)", (name, image_id, kind))

    def set_pinned(self, image_id: str, pinned: bool) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE images SET pinned = ? WHERE id = ? AND removed = 0", (int(pinned), image_id)
            )
            return cur.rowcount > 0

    def remove_image(self, image_id: str) -> Garbage:
        """Drops every name of the image; deletes it unless a lease holds it. Returns files to delete."""
        with self._tx() as db:
            db.execute("DELETE FROM names WHERE image_id = ?", (image_id,))
            leased = db.execute("SELECT 1 FROM leases WHERE image_id = ?", (image_id,)).fetchone()
            if leased is not None:
                db.execute("UPDATE images SET removed = 1 WHERE id = ?", (image_id,))
                return Garbage()
            return self._delete_image(db, image_id)

    def _delete_image(self, db: sqlite3.Connection, image_id: str) -> Garbage:
        chains = [
            r["chain_id"]
            for r in db.execute("SELECT chain_id FROM image_layers WHERE image_id = ?", (image_id,))
        ]
        db.execute("DELETE FROM image_layers WHERE image_id = ?", (image_id,))
        db.execute("DELETE FROM images WHERE id = ?", (image_id,))
        dead: list[LayerRow] = []
        for chain in dict.fromkeys(chains):
            if db.execute("SELECT 1 FROM image_layers WHERE chain_id = ?", (chain,)).fetchone() is None:
                row = db.execute("SELECT * FROM layers WHERE chain_id = ?", (chain,)).fetchone()
                if row is not None:
                    dead.append(LayerRow(**dict(row)))
                    db.execute("DELETE FROM layers WHERE chain_id = ?", (chain,))
        blobs = [image_id]
        for layer in dead:
            shared = db.execute("SELECT 1 FROM layers WHERE blob_digest = ?", (layer.blob_digest,)).fetchone()
            if shared is None:
                blobs.append(layer.blob_digest)
        return Garbage(layers=tuple(dead), blobs=tuple(blobs))

    # ---- leases ---------------------------------------------------------------------------

    def acquire(self, image_id: str, holder: str) -> bool:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is None:
                return False
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?)", (holder, image_id))
            return True

    def release(self, holder: str) -> Garbage:
        with self._tx() as db:
            row = db.execute("SELECT image_id FROM leases WHERE holder = ?", (holder,)).fetchone()
            if row is None:
                return Garbage()
            image_id = row["image_id"]
            db.execute("DELETE FROM leases WHERE holder = ?", (holder,))
            image = db.execute("SELECT removed FROM images WHERE id = ?", (image_id,)).fetchone()
            still = db.execute("SELECT 1 FROM leases WHERE image_id = ?", (image_id,)).fetchone()
            if image is not None and image["removed"] and still is None:
                return self._delete_image(db, image_id)
            return Garbage()
