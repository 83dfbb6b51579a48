"""The state store: ID lookups, the in-memory index against SQLite, status changes, migration."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from pathlib import Path

import pytest
from crishim.runtime.errors import AlreadyExists, InvalidArgument, NotFound
from crishim.runtime.services import _resolve
from crishim.runtime.state.migrate import NewerSchema
from crishim.runtime.state.records import (
    CONTAINER_EXITED,
    CONTAINER_RUNNING,
    SANDBOX_NOTREADY,
    ContainerMeta,
    ContainerStatus,
    Record,
    SandboxMeta,
    SandboxStatus,
)
from crishim.runtime.state.schema import SCHEMA_VERSION
from crishim.runtime.state.schema import container_name_key as schema_name_key
from crishim.runtime.state.store import StateStore
from crishim.runtime.state.table import RecordTable


def sandbox(sid: str, name: str) -> SandboxMeta:
    return SandboxMeta(id=sid, name=name, namespace="ns", uid="u", attempt=0, created_at=1,
                       runtime_handler="runc", config=b"\x00pod\xff", bundle="/b",
                       additional_ips=("fd00::2",), labels={"app": name}, userns=True)  # fmt: skip


def container(cid: str, sid: str, name: str) -> ContainerMeta:
    return ContainerMeta(id=cid, sandbox_id=sid, name=name, attempt=0, created_at=2, config=b"\x01ctr",
                         image="busybox", image_id="sha256:i", image_ref="sha256:i", bundle=f"/c/{cid}",
                         rootfs=f"/c/{cid}/rootfs", runtime_handler="runc", tty=True,
                         image_volumes=("/v1", "/v2"), annotations={"a": "b"})  # fmt: skip


def snapshot(store: StateStore) -> tuple[object, ...]:
    """Everything the index answers, as comparable values."""
    return (
        [(r.meta, r.status) for r in store.sandboxes.all()],
        [(r.meta, r.status) for r in store.containers.all()],
        {sid: [r.meta.id for r in store.containers.in_sandbox(sid)] for sid in ("s1", "s2", "s3")},
    )


def test_exact_ids_prefixes_and_ambiguity(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.sandboxes.add(sandbox("abc123", "one"), SandboxStatus())
    store.sandboxes.add(sandbox("abd456", "two"), SandboxStatus())
    store.sandboxes.add(sandbox("abc", "three"), SandboxStatus())

    def resolve(wanted: str) -> str:
        return _resolve(wanted, store.sandboxes.ids_matching(wanted), "pod sandbox", False)

    assert resolve("abc") == "abc"  # an exact ID wins over the longer one it prefixes
    assert resolve("abc1") == "abc123"
    assert resolve("abd") == "abd456"
    with pytest.raises(InvalidArgument, match="ambiguous"):
        resolve("ab")
    with pytest.raises(NotFound):
        resolve("ABC")  # IDs are case-sensitive
    with pytest.raises(NotFound):
        resolve("")
    assert _resolve("zz", store.sandboxes.ids_matching("zz"), "pod sandbox", True) == "zz"
    store.close()


def test_index_is_what_sqlite_holds_after_reopen(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    for sid in ("s1", "s2", "s3"):
        store.sandboxes.add(sandbox(sid, f"pod-{sid}"), SandboxStatus())
    for i in range(6):
        store.containers.add(container(f"c{i}", f"s{1 + i % 3}", f"ctr{i}"), ContainerStatus(resources='{"x":1}'))
    store.containers.update_status("c1", lambda s: dataclasses.replace(s, state=CONTAINER_RUNNING, started_at=5))
    store.containers.update_status(
        "c2", lambda s: dataclasses.replace(s, state=CONTAINER_EXITED, exit_code=3, reason="Error", message="é")
    )
    store.sandboxes.update_status(
        "s2", lambda s: dataclasses.replace(s, state=SANDBOX_NOTREADY, network_torn_down=True)
    )
    store.containers.delete("c3")
    store.sandboxes.delete("s3")
    store.set_setting("pod_cidr", "10.1.0.0/16")
    before = snapshot(store)
    store.close()

    db = sqlite3.connect(tmp_path / "state.db")
    status_rows = [
        db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("sandbox_status", "container_status")
    ]
    db.close()
    assert status_rows == [2, 5]  # a deleted record's status row went with it

    reopened = StateStore(tmp_path / "state.db")
    assert snapshot(reopened) == before
    assert [r.meta.id for r in reopened.containers.all()] == ["c0", "c1", "c2", "c4", "c5"]  # oldest first
    assert reopened.containers.in_sandbox("s1") == [reopened.containers.get("c0")]
    assert reopened.sandboxes.find_by_name("k8s_pod-s1_ns_u_0") is reopened.sandboxes.get("s1")
    assert reopened.sandboxes.find_by_name("k8s_pod-s3_ns_u_0") is None
    assert reopened.get_setting("pod_cidr") == "10.1.0.0/16"
    assert reopened.containers.get("c0").meta.config == b"\x01ctr"
    reopened.close()


def test_a_status_changes_only_through_update_status(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.sandboxes.add(sandbox("s1", "pod"), SandboxStatus())
    first = store.containers.add(container("c1", "s1", "ctr"), ContainerStatus())
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status.state = CONTAINER_RUNNING  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status = ContainerStatus(state=CONTAINER_RUNNING)  # type: ignore[misc]
    mutators = {n for n in vars(RecordTable) if not n.startswith("_")} - {
        "get", "find_by_name", "all", "in_sandbox", "ids_matching", "count_states"
    }  # fmt: skip
    # Metadata is added or deleted, and changed only by update_meta (a restored container's pids).
    assert mutators == {"add", "update_status", "update_meta", "delete"}

    running = store.containers.update_status("c1", lambda s: dataclasses.replace(s, state=CONTAINER_RUNNING))
    assert running is store.containers.get("c1")
    assert running is not first  # a new snapshot per change
    assert first.status.state != CONTAINER_RUNNING  # the old one never changes under its reader
    assert running.meta is first.meta
    assert store.containers.update_status("c1", lambda s: s) is running  # no change, no new record
    store.close()


def test_starting_is_kept_in_memory_only(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.sandboxes.add(sandbox("s1", "pod"), SandboxStatus())
    store.containers.add(container("c1", "s1", "ctr"), ContainerStatus())
    writes = store._db.connection.total_changes
    starting = store.containers.update_status("c1", lambda s: dataclasses.replace(s, starting=True))
    assert starting.status.starting
    assert store._db.connection.total_changes == writes  # nothing stored changed: no write
    store.close()
    assert not StateStore(tmp_path / "state.db").containers.get("c1").status.starting  # no start outlives us


def test_a_failed_write_leaves_memory_as_it_was(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.sandboxes.add(sandbox("s1", "pod"), SandboxStatus())
    other = sqlite3.connect(tmp_path / "state.db")
    other.execute("DROP TABLE sandbox_status")  # a write the store cannot make
    other.commit()
    with pytest.raises(sqlite3.OperationalError):
        store.sandboxes.update_status("s1", lambda s: dataclasses.replace(s, state=SANDBOX_NOTREADY))
    assert store.sandboxes.get("s1").status == SandboxStatus()
    with pytest.raises(sqlite3.OperationalError):
        store.sandboxes.add(sandbox("s2", "pod2"), SandboxStatus())
    assert [r.meta.id for r in store.sandboxes.all()] == ["s1"]
    assert store.sandboxes.ids_matching("s2") == []
    other.close()
    store.close()


def test_names_are_unique(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.sandboxes.add(sandbox("s1", "pod"), SandboxStatus())
    with pytest.raises(AlreadyExists, match="already used by sandbox s1"):
        store.sandboxes.add(sandbox("s2", "pod"), SandboxStatus())
    store.containers.add(container("c1", "s1", "ctr"), ContainerStatus())
    with pytest.raises(AlreadyExists, match="already exists in sandbox s1 as c1"):
        store.containers.add(container("c2", "s1", "ctr"), ContainerStatus())
    store.containers.delete("c1")
    store.containers.add(container("c2", "s1", "ctr"), ContainerStatus())  # free again once removed
    store.containers.delete("absent")  # not an error
    with pytest.raises(NotFound, match="container 'c1' not found"):
        store.containers.get("c1")
    store.close()


def test_states_are_counted_from_another_thread(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.sandboxes.add(sandbox("s1", "pod"), SandboxStatus())
    for i in range(3):
        store.containers.add(container(f"c{i}", "s1", f"ctr{i}"), ContainerStatus())
    store.containers.update_status("c0", lambda s: dataclasses.replace(s, state=CONTAINER_EXITED))
    counted: list[object] = []
    thread = threading.Thread(target=lambda: counted.append(dict(store.containers.count_states())))
    thread.start()
    thread.join()
    assert counted == [{"CREATED": 2, "EXITED": 1}]
    store.close()


# -- the layout before schema versions: one JSON document per record --------------------------

V0_SCHEMA = """
CREATE TABLE sandboxes (id TEXT PRIMARY KEY, name_key TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE containers (id TEXT PRIMARY KEY, sandbox_id TEXT NOT NULL, name_key TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX containers_by_sandbox ON containers(sandbox_id);
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def v0_document(meta: SandboxMeta | ContainerMeta, status: SandboxStatus | ContainerStatus) -> str:
    """A record as the JSON-with-hex encoding of schema 0 wrote it (metadata and status in one)."""
    data = {**dataclasses.asdict(meta), **dataclasses.asdict(status)}
    data.pop("starting", None)
    data["config"] = meta.config.hex()
    return json.dumps(data, separators=(",", ":"))


def write_v0_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(V0_SCHEMA)
    pod = sandbox("s1", "pod")
    torn_down = SandboxStatus(state=SANDBOX_NOTREADY, network_torn_down=True)
    db.execute("INSERT INTO sandboxes VALUES ('s1', 'k8s_pod_ns_u_0', ?)", (v0_document(pod, SandboxStatus()),))
    db.execute(
        "INSERT INTO sandboxes VALUES ('s2', 'k8s_old_ns_u_0', ?)", (v0_document(sandbox("s2", "old"), torn_down),)
    )
    exited = ContainerStatus(state=CONTAINER_EXITED, exit_code=1, finished_at=9, reason="Error", resources='{"a":1}')
    db.execute(
        "INSERT INTO containers VALUES ('c1', 's1', 's1/ctr_0', ?)",
        (v0_document(container("c1", "s1", "ctr"), exited),),
    )
    # An older daemon's document: fields added since are missing, one since dropped is there.
    old = json.loads(v0_document(container("c2", "s1", "run"), ContainerStatus(state=CONTAINER_RUNNING)))
    for key in ("mounts", "user", "image_volumes", "resources"):
        del old[key]
    old["retired_field"] = 1
    db.execute("INSERT INTO containers VALUES ('c2', 's1', 's1/run_0', ?)", (json.dumps(old),))
    db.execute("INSERT INTO kv VALUES ('pod_cidr', '10.9.0.0/16')")
    db.commit()
    db.close()


def test_a_json_database_is_migrated_with_every_record(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    write_v0_database(path)

    store = StateStore(path)
    pod, old = store.sandboxes.get("s1"), store.sandboxes.get("s2")
    assert (pod.meta, pod.status) == (sandbox("s1", "pod"), SandboxStatus())
    assert old.status == SandboxStatus(state=SANDBOX_NOTREADY, network_torn_down=True)
    c1 = store.containers.get("c1")
    assert c1.meta == container("c1", "s1", "ctr")
    assert c1.status == ContainerStatus(state=CONTAINER_EXITED, exit_code=1, finished_at=9, reason="Error",
                                        resources='{"a":1}')  # fmt: skip
    c2 = store.containers.get("c2")
    assert c2.meta == dataclasses.replace(container("c2", "s1", "run"), image_volumes=())
    assert c2.status == ContainerStatus(state=CONTAINER_RUNNING)
    assert [r.meta.id for r in store.containers.in_sandbox("s1")] == ["c1", "c2"]
    assert store.get_setting("pod_cidr") == "10.9.0.0/16"
    with pytest.raises(AlreadyExists):  # the names came along
        store.containers.add(container("c3", "s1", "ctr"), ContainerStatus())
    before = snapshot(store)
    store.close()

    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    assert tables == {"sandboxes", "sandbox_status", "containers", "container_status", "kv"}
    assert snapshot(StateStore(path)) == before  # opening it again changes nothing


def test_a_database_from_a_newer_crishim_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(NewerSchema, match="newer than this crishim"):
        StateStore(path)


def test_records_compare_by_identity() -> None:
    meta = sandbox("s1", "pod")
    assert Record(meta, SandboxStatus()) != Record(meta, SandboxStatus())
    assert len({Record(meta, SandboxStatus()), Record(meta, SandboxStatus())}) == 2  # hashable: cache keys


def test_pids_known_after_create_are_stored_and_the_id_and_name_stay(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.sandboxes.add(sandbox("s1", "pod"), SandboxStatus())
    store.containers.add(container("c1", "s1", "ctr"), ContainerStatus(restore_pending=True))
    updated = store.containers.update_meta("c1", lambda m: dataclasses.replace(m, pid=41, conmon_pid=40))
    assert updated is store.containers.get("c1")
    assert (updated.meta.pid, updated.meta.conmon_pid, updated.status.restore_pending) == (41, 40, True)
    with pytest.raises(ValueError, match="do not change"):
        store.containers.update_meta("c1", lambda m: dataclasses.replace(m, name="other"))
    with pytest.raises(ValueError, match="do not change"):
        store.containers.update_meta("c1", lambda m: dataclasses.replace(m, id="c2"))
    store.close()
    reopened = StateStore(tmp_path / "state.db")
    record = reopened.containers.get("c1")
    assert (record.meta.pid, record.meta.conmon_pid, record.meta.name) == (41, 40, "ctr")
    assert record.status.restore_pending is True
    assert reopened.containers.find_by_name(schema_name_key("s1", "ctr", 0)) is record
    reopened.close()


def test_a_version_1_database_gains_restore_pending(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.sandboxes.add(sandbox("s1", "pod"), SandboxStatus())
    store.containers.add(container("c1", "s1", "ctr"), ContainerStatus(state=CONTAINER_RUNNING))
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("ALTER TABLE container_status DROP COLUMN restore_pending")
    db.execute("ALTER TABLE sandboxes DROP COLUMN infra_container")
    db.execute("ALTER TABLE sandboxes DROP COLUMN namespace_paths")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    upgraded = StateStore(tmp_path / "state.db")
    record = upgraded.containers.get("c1")
    assert (record.status.state, record.status.restore_pending) == (CONTAINER_RUNNING, False)
    upgraded.close()
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()


def test_a_version_2_database_records_every_pod_with_its_infra_container(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.sandboxes.add(sandbox("s1", "pod"), SandboxStatus())
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("ALTER TABLE sandboxes DROP COLUMN infra_container")
    db.execute("ALTER TABLE sandboxes DROP COLUMN namespace_paths")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    upgraded = StateStore(tmp_path / "state.db")
    meta = upgraded.sandboxes.get("s1").meta
    assert (meta.name, meta.infra_container, meta.namespace_paths) == ("pod", True, {})
    upgraded.sandboxes.add(
        dataclasses.replace(sandbox("s2", "bare"), infra_container=False, namespace_paths={"ipc": "/x/ipc"}),
        SandboxStatus(),
    )
    upgraded.close()
    reopened = StateStore(tmp_path / "state.db")
    bare = reopened.sandboxes.get("s2").meta
    assert (bare.infra_container, bare.namespace_paths) == (False, {"ipc": "/x/ipc"})
    reopened.close()
