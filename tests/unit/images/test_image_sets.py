"""Image sets (KEP-4216) in the metadata and the store, without a registry: names, removal,
shared layers, leases and the upgrade of a database written before image sets existed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from crishim.images.errors import InvalidArgument, NotFound
from crishim.images.metadata import Metadata
from crishim.images.store import VOLUME_HOLDER_PREFIX, ImageStore

IMAGE = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
CHAIN = "sha256:" + "c" * 64
BLOB = "sha256:" + "d" * 64


def add_layer(meta: Metadata) -> None:
    from crishim.images.metadata import LayerRow

    meta.add_layer(LayerRow(chain_id=CHAIN, diff_id=CHAIN, blob_digest=BLOB, blob_size=10, size=20, inodes=2))


def record(meta: Metadata, image_set: str, image_id: str = IMAGE, tag: str = "reg/app:1") -> None:
    meta.record_image(
        image_id=image_id,
        config={"config": {}},
        manifest_digest="sha256:" + "e" * 64,
        manifest=b"{}",
        size=30,
        layers=[CHAIN],
        tags=[tag],
        digests=[],
        image_set=image_set,
    )


def test_names_and_removal_are_per_set_and_layers_go_with_the_last_image(tmp_path: Path) -> None:
    meta = Metadata(tmp_path / "images.db")
    try:
        add_layer(meta)
        record(meta, "")
        record(meta, "crun")
        assert meta.image_by_name("reg/app:1", "") == IMAGE
        assert meta.image_by_name("reg/app:1", "crun") == IMAGE
        assert meta.image_by_name("reg/app:1", "kata") is None
        assert [r.image_set for r in meta.images(None)] == ["", "crun"]
        assert meta.layer_refcount(CHAIN) == 2

        first = meta.remove_image(IMAGE, "crun")
        assert first.layers == ()
        assert first.blobs == ()
        assert meta.image(IMAGE, "crun") is None
        assert meta.image(IMAGE, "") is not None
        last = meta.remove_image(IMAGE, "")
        assert [layer.chain_id for layer in last.layers] == [CHAIN]
        assert set(last.blobs) == {IMAGE, BLOB}
    finally:
        meta.close()


def test_a_lease_in_one_set_keeps_only_that_sets_image(tmp_path: Path) -> None:
    meta = Metadata(tmp_path / "images.db")
    try:
        add_layer(meta)
        record(meta, "crun")
        assert not meta.acquire(IMAGE, "container:x", "")  # not in the shared set
        assert meta.acquire(IMAGE, "container:x", "crun")
        assert meta.remove_image(IMAGE, "crun") == meta.release("nobody")  # nothing to delete yet
        removed = meta.image(IMAGE, "crun", include_removed=True)
        assert removed is not None
        assert removed.removed
        assert removed.lease_holders == ("container:x",)
        garbage = meta.release("container:x")
        assert [layer.chain_id for layer in garbage.layers] == [CHAIN]
        assert meta.image(IMAGE, None, include_removed=True) is None
    finally:
        meta.close()


def test_a_database_without_image_sets_is_moved_into_the_shared_set(tmp_path: Path) -> None:
    path = tmp_path / "images.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE images (id TEXT PRIMARY KEY, config TEXT NOT NULL, manifest_digest TEXT NOT NULL,
            manifest TEXT NOT NULL, size INTEGER NOT NULL, pinned INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL, removed INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE names (name TEXT PRIMARY KEY, image_id TEXT NOT NULL REFERENCES images(id)
            ON DELETE CASCADE, kind TEXT NOT NULL CHECK (kind IN ('tag', 'digest')));
        CREATE INDEX names_by_image ON names(image_id);
        CREATE TABLE layers (chain_id TEXT PRIMARY KEY, diff_id TEXT NOT NULL, blob_digest TEXT NOT NULL,
            blob_size INTEGER NOT NULL, size INTEGER NOT NULL, inodes INTEGER NOT NULL);
        CREATE TABLE image_layers (image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            position INTEGER NOT NULL, chain_id TEXT NOT NULL REFERENCES layers(chain_id),
            PRIMARY KEY (image_id, position));
        CREATE INDEX image_layers_by_layer ON image_layers(chain_id);
        CREATE TABLE leases (holder TEXT PRIMARY KEY, image_id TEXT NOT NULL REFERENCES images(id));
        """
    )
    old.execute("INSERT INTO images VALUES (?, '{}', 'sha256:m', '{}', 5, 1, 1.0, 0)", (IMAGE,))
    old.execute("INSERT INTO names VALUES ('reg/app:1', ?, 'tag')", (IMAGE,))
    old.execute("INSERT INTO layers VALUES (?, ?, ?, 1, 2, 3)", (CHAIN, CHAIN, BLOB))
    old.execute("INSERT INTO image_layers VALUES (?, 0, ?)", (IMAGE, CHAIN))
    old.execute("INSERT INTO leases VALUES ('container:y', ?)", (IMAGE,))
    old.commit()
    old.close()

    meta = Metadata(path)
    try:
        row = meta.image(IMAGE, "")
        assert row is not None
        assert (row.repo_tags, row.layers, row.pinned) == (("reg/app:1",), (CHAIN,), True)
        assert row.lease_holders == ("container:y",)
        assert meta.image_by_name("reg/app:1") == IMAGE
        record(meta, "crun")  # the new schema takes a second set
        assert meta.layer_refcount(CHAIN) == 2
    finally:
        meta.close()
    again = Metadata(path)  # opening twice migrates once
    try:
        assert len(again.images(None)) == 2
    finally:
        again.close()


def test_store_maps_handlers_to_sets_and_refuses_unknown_ones(tmp_path: Path) -> None:
    shared = ImageStore(tmp_path / "plain", None)
    try:
        assert shared.image_set("anything") == ""
    finally:
        shared.close()
    store = ImageStore(tmp_path / "sets", None, image_sets={"": "", "runc": "", "crun": "crun"})
    try:
        assert [store.image_set(h) for h in ("", "runc", "crun")] == ["", "", "crun"]
        with pytest.raises(InvalidArgument, match="'kata' is not configured"):
            store.image_set("kata")
        add_layer(store.meta)
        record(store.meta, "crun", tag="127.0.0.1:5000/app:1")
        assert store.resolve("127.0.0.1:5000/app:1", "crun").image_set == "crun"
        assert store.resolve(IMAGE[7:19], "crun").id == IMAGE  # an ID prefix, within the set
        with pytest.raises(NotFound, match="runtime handler 'crun'|pull it first"):
            store.resolve("127.0.0.1:5000/app:1")
    finally:
        store.close()


def test_stale_image_volume_leases_are_released_at_start(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store", None)
    add_layer(store.meta)
    record(store.meta, "")
    gone = tmp_path / "container" / "volumes" / "0"  # never mounted: a crash left only the lease
    store.acquire(IMAGE, VOLUME_HOLDER_PREFIX + str(gone))
    store.acquire(IMAGE, "container:c1")
    store.close()
    reopened = ImageStore(tmp_path / "store", None)
    try:
        assert reopened.meta.lease_holders() == ["container:c1"]
    finally:
        reopened.close()
