"""Image and layer metadata in SQLite (`<image_store>/images.db`, WAL).

Tables:
  images(image_set, id, config, manifest_digest, manifest, size, pinned, created, removed)
  names(image_set, name, image_id, kind)  -- repo tags ('tag') and repo digests ('digest')
  layers(chain_id, diff_id, blob_digest, blob_size, size, inodes)
  image_layers(image_set, image_id, position, chain_id)  -- a layer's reference count is its row count
  leases(holder, image_set, image_id)     -- containers / image volumes using an image
  prefetch(ref, source)                   -- references kept pulled and pinned (prefetch.py)

An image set is one namespace of images and names: '' is the set every runtime
handler shares; a handler with `separate_images` (KEP-4216) has its own, named
after it. The same image (same ID) may be in several sets; layers are shared by
chain ID across all of them, so a second set pulling an image downloads nothing.

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

from .records import ImageRecord

SHARED_SET = ""

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    image_set TEXT NOT NULL DEFAULT '',
    id TEXT NOT NULL,
    config TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    size INTEGER NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (image_set, id)
);
CREATE INDEX IF NOT EXISTS images_by_id ON images(id);
CREATE TABLE IF NOT EXISTS names (
    image_set TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    image_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
    PRIMARY KEY (image_set, name),
    FOREIGN KEY (image_set, image_id) REFERENCES images(image_set, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS names_by_image ON names(image_set, image_id);
CREATE TABLE IF NOT EXISTS layers (
    chain_id TEXT PRIMARY KEY,
    diff_id TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    blob_size INTEGER NOT NULL,
    size INTEGER NOT NULL,
    inodes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS image_layers (
    image_set TEXT NOT NULL DEFAULT '',
    image_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    chain_id TEXT NOT NULL REFERENCES layers(chain_id),
    PRIMARY KEY (image_set, image_id, position),
    FOREIGN KEY (image_set, image_id) REFERENCES images(image_set, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS image_layers_by_layer ON image_layers(chain_id);
CREATE TABLE IF NOT EXISTS leases (
    holder TEXT PRIMARY KEY,
    image_set TEXT NOT NULL DEFAULT '',
    image_id TEXT NOT NULL,
    FOREIGN KEY (image_set, image_id) REFERENCES images(image_set, id)
);
CREATE TABLE IF NOT EXISTS prefetch (
    ref TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (ref, source)
);
"""

# Databases written before image sets existed: same tables without the image_set column.
_MIGRATE_V1 = """
ALTER TABLE images RENAME TO v1_images;
ALTER TABLE names RENAME TO v1_names;
ALTER TABLE image_layers RENAME TO v1_image_layers;
ALTER TABLE leases RENAME TO v1_leases;
DROP INDEX IF EXISTS names_by_image;
DROP INDEX IF EXISTS image_layers_by_layer;
"""
_COPY_V1 = """
INSERT INTO images (image_set, id, config, manifest_digest, manifest, size, pinned, created, removed)
    SELECT '', id, config, manifest_digest, manifest, size, pinned, created, removed FROM v1_images;
INSERT INTO names (image_set, name, image_id, kind) SELECT '', name, image_id, kind FROM v1_names;
INSERT INTO image_layers (image_set, image_id, position, chain_id)
    SELECT '', image_id, position, chain_id FROM v1_image_layers;
INSERT INTO leases (holder, image_set, image_id) SELECT holder, '', image_id FROM v1_leases;
DROP TABLE v1_leases;
DROP TABLE v1_image_layers;
DROP TABLE v1_names;
DROP TABLE v1_images;
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
    image_set: str = SHARED_SET
    annotations: dict[str, str] = field(default_factory=dict)

    def record(self) -> ImageRecord:
        """The public record of this row."""
        return ImageRecord(
            id=self.id,
            repo_tags=self.repo_tags,
            repo_digests=self.repo_digests,
            size=self.size,
            pinned=self.pinned,
            config=self.config,
            layers=self.layers,
            manifest_digest=self.manifest_digest,
            created=self.created,
            image_set=self.image_set,
            annotations=self.annotations,
        )


def manifest_annotations(manifest: str) -> dict[str, str]:
    """The string annotations of a stored image manifest; {} for one without (or a docker save entry).

    Read from the manifest kept with the image rather than a column of their own, so
    images stored before annotations were shown have theirs too; most manifests have
    none, and those are not parsed at all. An image is its config: a second manifest
    of the same config (another registry's, say) adds names, and the first's annotations stay."""
    if '"annotations"' not in manifest:
        return {}
    try:
        found = json.loads(manifest).get("annotations")
    except (ValueError, AttributeError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}


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
        self._migrate()
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def _migrate(self) -> None:
        """Moves a database without image sets into the shared set, in one transaction."""
        columns = [r["name"] for r in self._db.execute("PRAGMA table_info(images)")]
        if not columns or "image_set" in columns:
            return
        # Foreign keys stay off (it cannot change inside a transaction) while tables are swapped.
        self._db.execute("PRAGMA foreign_keys=OFF")
        self._db.executescript("BEGIN IMMEDIATE;" + _MIGRATE_V1 + SCHEMA + _COPY_V1 + "COMMIT;")

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
        """How many images, counted once per image set, use the layer."""
        rows = self._query("SELECT COUNT(*) FROM image_layers WHERE chain_id = ?", (chain_id,))
        return int(rows[0][0])

    def delete_layer(self, chain_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM layers WHERE chain_id = ? AND NOT EXISTS (SELECT 1 FROM image_layers WHERE chain_id = ?)",
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
        image_id, image_set = row["id"], row["image_set"]
        key = (image_set, image_id)
        names = self._query("SELECT name, kind FROM names WHERE image_set = ? AND image_id = ? ORDER BY name", key)
        layers = self._query(
            "SELECT chain_id FROM image_layers WHERE image_set = ? AND image_id = ? ORDER BY position", key
        )
        holders = self._query("SELECT holder FROM leases WHERE image_set = ? AND image_id = ? ORDER BY holder", key)
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
            image_set=image_set,
            annotations=manifest_annotations(row["manifest"]),
        )

    def image(
        self, image_id: str, image_set: str | None = SHARED_SET, *, include_removed: bool = False
    ) -> ImageRow | None:
        """The image in `image_set`; with None, in any set (its config and layers are the same in all)."""
        if image_set is None:
            rows = self._query("SELECT * FROM images WHERE id = ? ORDER BY removed, image_set LIMIT 1", (image_id,))
        else:
            rows = self._query("SELECT * FROM images WHERE image_set = ? AND id = ?", (image_set, image_id))
        if not rows or (rows[0]["removed"] and not include_removed):
            return None
        return self._image_row(rows[0])

    def images(self, image_set: str | None = SHARED_SET) -> list[ImageRow]:
        """The images of one set, or of every set with None."""
        if image_set is None:
            rows = self._query("SELECT * FROM images WHERE removed = 0 ORDER BY created, image_set")
        else:
            rows = self._query(
                "SELECT * FROM images WHERE removed = 0 AND image_set = ? ORDER BY created", (image_set,)
            )
        return [self._image_row(r) for r in rows]

    def image_ids_with_prefix(self, prefix: str, image_set: str = SHARED_SET) -> list[str]:
        rows = self._query(
            "SELECT id FROM images WHERE removed = 0 AND image_set = ? AND substr(id, 1, ?) = ?",
            (image_set, len(prefix), prefix),
        )
        return [r["id"] for r in rows]

    def image_by_name(self, name: str, image_set: str = SHARED_SET) -> str | None:
        rows = self._query(
            "SELECT n.image_id FROM names n JOIN images i ON i.image_set = n.image_set AND i.id = n.image_id "
            "WHERE n.image_set = ? AND n.name = ? AND i.removed = 0",
            (image_set, name),
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
        image_set: str = SHARED_SET,
    ) -> None:
        """Adds or refreshes an image in `image_set` and points `tags`/`digests` at it (moving a
        tag from another image of the set).

        An image left without names by a moved tag stays listed by ID, as dangling images do elsewhere.
        """
        key = (image_set, image_id)
        with self._tx() as db:
            existing = db.execute("SELECT id FROM images WHERE image_set = ? AND id = ?", key).fetchone()
            if existing is None:
                db.execute(
                    "INSERT INTO images (image_set, id, config, manifest_digest, manifest, size, pinned, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        image_set,
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
                    "INSERT INTO image_layers VALUES (?, ?, ?, ?)",
                    [(image_set, image_id, i, chain) for i, chain in enumerate(layers)],
                )
            else:
                db.execute("UPDATE images SET removed = 0 WHERE image_set = ? AND id = ?", key)
                if pinned is not None:
                    db.execute("UPDATE images SET pinned = ? WHERE image_set = ? AND id = ?", (int(pinned), *key))
            for name, kind in [(t, "tag") for t in tags] + [(d, "digest") for d in digests]:
                db.execute("INSERT OR REPLACE INTO names VALUES (?, ?, ?, ?)", (image_set, name, image_id, kind))

    def set_pinned(self, image_id: str, pinned: bool, image_set: str = SHARED_SET) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE images SET pinned = ? WHERE image_set = ? AND id = ? AND removed = 0",
                (int(pinned), image_set, image_id),
            )
            return cur.rowcount > 0

    # ---- the pre-fetch list ---------------------------------------------------------------

    def prefetch_refs(self, source: str | None = None) -> list[str]:
        """The references to keep pulled (of one source, or all), each once, in the order added."""
        if source is None:
            rows = self._query("SELECT ref FROM prefetch GROUP BY ref ORDER BY MIN(rowid)")
        else:
            rows = self._query("SELECT ref FROM prefetch WHERE source = ? ORDER BY rowid", (source,))
        return [row["ref"] for row in rows]

    def set_prefetch_refs(self, source: str, refs: list[str], *, replace: bool) -> list[str]:
        """Adds `refs` under `source`; with `replace`, drops that source's others, which it returns."""
        with self._tx() as db:
            dropped: list[str] = []
            if replace:
                old = [r["ref"] for r in db.execute("SELECT ref FROM prefetch WHERE source = ?", (source,))]
                dropped = [ref for ref in old if ref not in refs]
                db.executemany("DELETE FROM prefetch WHERE ref = ? AND source = ?", [(r, source) for r in dropped])
            db.executemany("INSERT OR IGNORE INTO prefetch VALUES (?, ?)", [(r, source) for r in refs])
            return dropped

    def remove_image(self, image_id: str, image_set: str = SHARED_SET) -> Garbage:
        """Drops every name of the image in the set; deletes it there unless a lease holds it.
        Returns files to delete (none while another set still has the image or its layers)."""
        key = (image_set, image_id)
        with self._tx() as db:
            db.execute("DELETE FROM names WHERE image_set = ? AND image_id = ?", key)
            leased = db.execute("SELECT 1 FROM leases WHERE image_set = ? AND image_id = ?", key).fetchone()
            if leased is not None:
                db.execute("UPDATE images SET removed = 1 WHERE image_set = ? AND id = ?", key)
                return Garbage()
            return self._delete_image(db, image_set, image_id)

    def _delete_image(self, db: sqlite3.Connection, image_set: str, image_id: str) -> Garbage:
        key = (image_set, image_id)
        chains = [
            r["chain_id"]
            for r in db.execute("SELECT chain_id FROM image_layers WHERE image_set = ? AND image_id = ?", key)
        ]
        db.execute("DELETE FROM image_layers WHERE image_set = ? AND image_id = ?", key)
        db.execute("DELETE FROM images WHERE image_set = ? AND id = ?", key)
        dead: list[LayerRow] = []
        for chain in dict.fromkeys(chains):
            if db.execute("SELECT 1 FROM image_layers WHERE chain_id = ?", (chain,)).fetchone() is None:
                row = db.execute("SELECT * FROM layers WHERE chain_id = ?", (chain,)).fetchone()
                if row is not None:
                    dead.append(LayerRow(**dict(row)))
                    db.execute("DELETE FROM layers WHERE chain_id = ?", (chain,))
        blobs: list[str] = []
        if db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is None:
            blobs.append(image_id)  # the config blob, unless another set still has the image
        for layer in dead:
            shared = db.execute("SELECT 1 FROM layers WHERE blob_digest = ?", (layer.blob_digest,)).fetchone()
            if shared is None:
                blobs.append(layer.blob_digest)
        return Garbage(layers=tuple(dead), blobs=tuple(blobs))

    # ---- leases ---------------------------------------------------------------------------

    def acquire(self, image_id: str, holder: str, image_set: str = SHARED_SET) -> bool:
        with self._tx() as db:
            found = db.execute("SELECT 1 FROM images WHERE image_set = ? AND id = ?", (image_set, image_id)).fetchone()
            if found is None:
                return False
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (holder, image_set, image_id))
            return True

    def lease_holders(self, prefix: str = "") -> list[str]:
        rows = self._query(
            "SELECT holder FROM leases WHERE substr(holder, 1, ?) = ? ORDER BY holder", (len(prefix), prefix)
        )
        return [r["holder"] for r in rows]

    def release(self, holder: str) -> Garbage:
        with self._tx() as db:
            row = db.execute("SELECT image_set, image_id FROM leases WHERE holder = ?", (holder,)).fetchone()
            if row is None:
                return Garbage()
            key = (row["image_set"], row["image_id"])
            db.execute("DELETE FROM leases WHERE holder = ?", (holder,))
            image = db.execute("SELECT removed FROM images WHERE image_set = ? AND id = ?", key).fetchone()
            still = db.execute("SELECT 1 FROM leases WHERE image_set = ? AND image_id = ?", key).fetchone()
            if image is not None and image["removed"] and still is None:
                return self._delete_image(db, *key)
            return Garbage()
