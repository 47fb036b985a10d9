"""The local plane's SQLite store: desired resources, replicas, status, events, the plane."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from builders import model

from aiplane.api import Model
from aiplane.runtime.local.store import ModelStatusRow, ReplicaRow, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.db")


def replica(rid: str, model_name: str = "m", **fields: object) -> ReplicaRow:
    row: dict[str, object] = {
        "id": rid,
        "model": model_name,
        "generation": 1,
        "pid": 4242,
        "port": 40001,
        "state": "Starting",
        "devices": "",
        "restarts": 0,
        "started": 1000.5,
        "log_path": f"/logs/{rid}.log",
        "message": "",
        "argv": ["python", "-m", "llama_cpp.server", "--port", "40001"],
    }
    row.update(fields)
    return ReplicaRow(**row)  # type: ignore[arg-type]


def test_apply_creates_then_is_unchanged_then_configured(store: Store) -> None:
    assert store.apply(model("m").build()) == "created"
    assert store.apply(model("m").build()) == "unchanged"
    assert store.resources("Model")[0].generation == 1

    assert store.apply(model("m").gpus(1).build()) == "configured"
    (stored,) = store.resources("Model")
    assert stored.generation == 2
    assert isinstance(stored.resource, Model)
    assert stored.resource.spec.resources.gpus == 1

    assert store.apply(model("m").gpus(1).build()) == "unchanged"
    assert store.apply(model("m").gpus(2).build()) == "configured"
    assert store.resources("Model")[0].generation == 3


def test_bounds_autoscaling_and_routing_change_in_place_without_a_new_generation(store: Store) -> None:
    """The generation is what replicas run: a new one rolls them, so scaling must not."""
    assert store.apply(model("m").build()) == "created"
    assert store.apply(model("m").replicas(0, 5).build()) == "configured"
    (stored,) = store.resources("Model")
    assert stored.generation == 1 and isinstance(stored.resource, Model)
    assert stored.resource.spec.replicas.max == 5  # the new bounds are stored all the same
    assert store.apply(model("m").replicas(0, 5).build()) == "unchanged"
    assert store.apply(model("m").gpus(1).build()) == "configured"  # what runs: a rollout
    assert store.resources("Model")[0].generation == 2


def test_apply_keeps_the_creation_time(store: Store) -> None:
    store.apply(model("m").build())
    created = store.resources()[0].created
    store.apply(model("m").gpus(1).build())
    assert store.resources()[0].created == created


def test_stored_resource_round_trips(store: Store) -> None:
    original = model("m").engine("vllm").gpus(2, "H100").autoscaling(target=8, scaleToZeroAfter=90).build()
    store.apply(original)
    assert store.resources("Model")[0].resource == original


def test_resources_are_listed_by_kind_and_name(store: Store) -> None:
    for name in ("zeta", "alpha", "mid"):
        store.apply(model(name).build())
    assert [s.resource.name for s in store.resources("Model")] == ["alpha", "mid", "zeta"]
    assert store.resources("Queue") == []
    assert len(store.resources()) == 3


def test_delete(store: Store) -> None:
    store.apply(model("a").build())
    store.apply(model("b").build())
    store.set_status(ModelStatusRow("a", 1, 0, "starting", {}, 1.0))
    assert store.delete("Model", "a") is True
    assert [s.resource.name for s in store.resources()] == ["b"]
    assert "a" not in store.statuses()
    assert store.delete("Model", "a") is False
    assert store.delete("Queue", "b") is False  # same name, other kind
    assert [s.resource.name for s in store.resources()] == ["b"]


def test_deleting_another_kind_keeps_the_models_status(store: Store) -> None:
    store.apply(model("m").build())
    status = ModelStatusRow("m", 1, 1, "ready", {"last_active": 5.0, "below_since": None}, 1.0)
    store.set_status(status)
    assert store.delete("Queue", "m") is False
    assert store.statuses() == {"m": status}


def test_replicas_put_list_remove(store: Store) -> None:
    r1 = replica("m-1", state="Ready", devices="0,1", restarts=2, message="ok")
    r2 = replica("m-2", pid=None, started=None)
    other = replica("x-1", "x")
    for row in (r2, other, r1):
        store.put_replica(row)
    assert store.replicas("m") == [r1, r2]
    assert store.replicas() == [r1, r2, other]

    store.put_replica(replica("m-1", state="CrashLoopBackOff", restarts=3))  # upsert by id
    assert [(r.id, r.state, r.restarts) for r in store.replicas("m")] == [
        ("m-1", "CrashLoopBackOff", 3),
        ("m-2", "Starting", 0),
    ]

    store.remove_replica("m-1")
    assert store.replicas("m") == [r2]
    store.remove_replica("does-not-exist")
    assert len(store.replicas()) == 2


def test_status_round_trips(store: Store) -> None:
    status = ModelStatusRow("m", 2, 1, "scaling up", {"last_active": 5.0, "below_since": None}, 7.5)
    store.set_status(status)
    assert store.statuses() == {"m": status}
    store.set_status(ModelStatusRow("m", 0, 0, "idle", {}, 8.0))
    assert store.statuses()["m"].reason == "idle"


def test_events_newest_last_filtered_and_limited(store: Store) -> None:
    for i in range(5):
        store.event("Model/a" if i % 2 == 0 else "Model/b", "ScaleUp", f"event {i}")
    assert [e[3] for e in store.events()] == [f"event {i}" for i in range(5)]
    assert [e[3] for e in store.events("Model/b")] == ["event 1", "event 3"]
    assert [e[3] for e in store.events(limit=2)] == ["event 3", "event 4"]
    ts, ref, reason, _ = store.events()[0]
    assert (ref, reason) == ("Model/a", "ScaleUp") and ts > 0


def test_events_are_trimmed_to_a_bounded_count(store: Store) -> None:
    with closing(sqlite3.connect(store.path)) as db, db:  # seed fast, past the bound
        db.executemany(
            "INSERT INTO events VALUES (?,?,?,?)", [(float(i), "Model/m", "Old", str(i)) for i in range(5100)]
        )
    store.event("Model/m", "New", "latest")
    with closing(sqlite3.connect(store.path)) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
    assert count == 5000
    assert store.events(limit=1)[0][2:] == ("New", "latest")


def test_plane_claim_and_release(store: Store) -> None:
    assert store.plane() is None
    store.claim_plane(123, "http://127.0.0.1:8000")
    pid, address, started = store.plane() or (0, "", 0.0)
    assert (pid, address) == (123, "http://127.0.0.1:8000") and started > 0
    store.release_plane(999)  # someone else's pid: no effect
    assert store.plane() is not None
    store.release_plane(123)
    assert store.plane() is None


def test_two_stores_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    plane, cli = Store(path), Store(path)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)

    assert cli.apply(model("m").build()) == "created"
    assert [s.resource.name for s in plane.resources()] == ["m"]
    plane.put_replica(replica("m-1"))
    assert [r.id for r in cli.replicas()] == ["m-1"]
    assert plane.apply(model("m").gpus(1).build()) == "configured"
    assert cli.resources()[0].generation == 2
    assert cli.delete("Model", "m") is True
    assert plane.resources() == []


def test_reopening_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(path).apply(model("m").build())
    assert [s.resource.name for s in Store(path).resources()] == ["m"]
