"""SQLite state of the local plane: desired resources, observed replicas, events.

WAL mode lets the CLI read and write while ``aiplane up`` runs; the CLI talks to the
plane through this database, the way kubectl talks to the API server's store. Each
call opens a short transaction; nothing holds a write lock across an await.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiplane.api import AnyResource, parse_document

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, manifest TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, generation INTEGER NOT NULL,
    pid INTEGER, port INTEGER NOT NULL, state TEXT NOT NULL, devices TEXT NOT NULL DEFAULT '',
    restarts INTEGER NOT NULL DEFAULT 0, started REAL, log_path TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '', argv TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS model_status (
    model TEXT PRIMARY KEY, desired INTEGER NOT NULL, ready INTEGER NOT NULL,
    reason TEXT NOT NULL, autoscaler TEXT NOT NULL DEFAULT '{}', updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    ts REAL NOT NULL, ref TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_status (
    kind TEXT NOT NULL, name TEXT NOT NULL, generation INTEGER NOT NULL, phase TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', flavor TEXT, devices TEXT NOT NULL DEFAULT '[]',
    pids TEXT NOT NULL DEFAULT '[]', argv TEXT NOT NULL DEFAULT '[]',
    restarts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL, updated REAL NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}', scheduled REAL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS plane (
    id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, address TEXT NOT NULL,
    started REAL NOT NULL);
"""
# Columns added after a table was first released: a database made by an older aiplane
# gets them on open (SQLite's ADD COLUMN, with the same declaration as in SCHEMA).
ADDED_COLUMNS = (
    ("job_status", "progress", "TEXT NOT NULL DEFAULT '{}'"),
    ("job_status", "scheduled", "REAL"),
)


@dataclass(frozen=True)
class ReplicaRow:
    id: str
    model: str
    generation: int
    pid: int | None
    port: int
    state: str
    devices: str
    restarts: int
    started: float | None
    log_path: str
    message: str
    argv: list[str]


@dataclass(frozen=True)
class StoredResource:
    resource: AnyResource
    generation: int
    created: float


@dataclass(frozen=True)
class ModelStatusRow:
    model: str
    desired: int
    ready: int
    reason: str
    autoscaler: dict[str, Any]
    updated: float


@dataclass(frozen=True)
class JobStatusRow:
    """A TrainingJob's or BatchJob's observed state: phase, why, and what it holds.

    ``devices`` has one entry per worker (or BatchJob slot): the GPU indices it runs on.
    ``pids``/``argv`` let a restarted plane recognise its leftover workers.
    """

    kind: str
    name: str
    generation: int
    phase: str  # Pending | Running | Succeeded | Failed
    reason: str
    flavor: str | None
    devices: list[list[int]]
    pids: list[int]
    argv: list[str]
    restarts: int
    started: float | None
    finished: float | None
    updated: float
    progress: dict[str, Any] = field(default_factory=dict)  # merged progress lines (aiplane.progress)
    scheduled: float | None = None  # a cron job's last schedule time


# Fields the plane applies to running replicas as they are: changing them rolls none.
IN_PLACE: dict[str, tuple[str, ...]] = {"Model": ("replicas", "autoscaling", "routing")}


def _template(kind: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a resource's replicas run: its manifest without the in-place fields."""
    spec = {k: v for k, v in (manifest.get("spec") or {}).items() if k not in IN_PLACE.get(kind, ())}
    return {**manifest, "spec": spec}


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        db = sqlite3.connect(self.path, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            for table, column, declaration in ADDED_COLUMNS:
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        finally:
            db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # -- desired state -------------------------------------------------------------
    def apply(self, resource: AnyResource) -> str:
        """Create or update; returns 'created', 'configured' or 'unchanged' like kubectl.

        The generation is the version of what the replicas run: a change to a Model's
        ``IN_PLACE`` fields alone (its bounds, autoscaling, routing) is applied to the
        running replicas without a new generation, so no rollout restarts them (as
        scaling a Deployment or editing its HPA rolls no pods)."""
        data = resource.to_manifest()
        manifest = json.dumps(data, sort_keys=True)
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT manifest, generation FROM resources WHERE kind=? AND name=?",
                (resource.kind, resource.name),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO resources VALUES (?,?,?,1,?,?)",
                    (resource.kind, resource.name, manifest, now, now),
                )
                return "created"
            if row[0] == manifest:
                return "unchanged"
            rolls = _template(resource.kind, json.loads(row[0])) != _template(resource.kind, data)
            db.execute(
                "UPDATE resources SET manifest=?, generation=?, updated=? WHERE kind=? AND name=?",
                (manifest, row[1] + 1 if rolls else row[1], now, resource.kind, resource.name),
            )
            return "configured"

    def delete(self, kind: str, name: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM resources WHERE kind=? AND name=?", (kind, name))
            if kind == "Model" and cur.rowcount > 0:
                db.execute("DELETE FROM model_status WHERE model=?", (name,))
            if cur.rowcount > 0:
                db.execute("DELETE FROM job_status WHERE kind=? AND name=?", (kind, name))
            return cur.rowcount > 0

    def resources(self, kind: str | None = None) -> list[StoredResource]:
        with self._tx() as db:
            query = "SELECT manifest, generation, created FROM resources"
            rows = (
                db.execute(query + " WHERE kind=? ORDER BY name", (kind,)).fetchall()
                if kind
                else db.execute(query + " ORDER BY kind, name").fetchall()
            )
        return [StoredResource(parse_document(json.loads(m)), g, c) for m, g, c in rows]

    # -- observed replicas ---------------------------------------------------------
    def put_replica(self, row: ReplicaRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO replicas VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row.id, row.model, row.generation, row.pid, row.port, row.state,
                    row.devices, row.restarts, row.started, row.log_path, row.message,
                    json.dumps(row.argv),
                ),
            )  # fmt: skip

    def remove_replica(self, replica_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM replicas WHERE id=?", (replica_id,))

    def replicas(self, model: str | None = None) -> list[ReplicaRow]:
        with self._tx() as db:
            query = "SELECT * FROM replicas"
            rows = (
                db.execute(query + " WHERE model=? ORDER BY id", (model,)).fetchall()
                if model
                else db.execute(query + " ORDER BY model, id").fetchall()
            )
        return [
            ReplicaRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], json.loads(r[11]))
            for r in rows
        ]

    # -- status, events, plane -----------------------------------------------------
    def set_status(self, status: ModelStatusRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO model_status VALUES (?,?,?,?,?,?)",
                (
                    status.model, status.desired, status.ready, status.reason,
                    json.dumps(status.autoscaler), status.updated,
                ),
            )  # fmt: skip

    def statuses(self) -> dict[str, ModelStatusRow]:
        with self._tx() as db:
            rows = db.execute("SELECT * FROM model_status").fetchall()
        return {r[0]: ModelStatusRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows}

    def set_job_status(self, row: JobStatusRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO job_status (kind, name, generation, phase, reason, flavor, devices,"
                " pids, argv, restarts, started, finished, updated, progress, scheduled)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    row.kind, row.name, row.generation, row.phase, row.reason, row.flavor,
                    json.dumps(row.devices), json.dumps(row.pids), json.dumps(row.argv),
                    row.restarts, row.started, row.finished, row.updated, json.dumps(row.progress),
                    row.scheduled,
                ),
            )  # fmt: skip

    def remove_job_status(self, kind: str, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM job_status WHERE kind=? AND name=?", (kind, name))

    def job_statuses(self) -> dict[tuple[str, str], JobStatusRow]:
        """Every job's status, by (kind, name)."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT kind, name, generation, phase, reason, flavor, devices, pids, argv, restarts,"
                " started, finished, updated, progress, scheduled FROM job_status"
            ).fetchall()
        return {
            (r[0], r[1]): JobStatusRow(
                r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7]), json.loads(r[8]),
                r[9], r[10], r[11], r[12], json.loads(r[13]), r[14],
            )
            for r in rows
        }  # fmt: skip

    def event(self, ref: str, reason: str, message: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO events VALUES (?,?,?,?)", (time.time(), ref, reason, message))
            db.execute("DELETE FROM events WHERE rowid <= (SELECT MAX(rowid) - 5000 FROM events)")

    def events(self, ref: str | None = None, limit: int = 50) -> list[tuple[float, str, str, str]]:
        with self._tx() as db:
            if ref:
                cur = db.execute("SELECT * FROM events WHERE ref=? ORDER BY rowid DESC LIMIT ?", (ref, limit))
            else:
                cur = db.execute("SELECT * FROM events ORDER BY rowid DESC LIMIT ?", (limit,))
            rows = cur.fetchall()
        return [tuple(r) for r in reversed(rows)]

    def claim_plane(self, pid: int, address: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO plane VALUES (1,?,?,?)", (pid, address, time.time()))

    def release_plane(self, pid: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM plane WHERE id=1 AND pid=?", (pid,))

    def plane(self) -> tuple[int, str, float] | None:
        with self._tx() as db:
            row = db.execute("SELECT pid, address, started FROM plane WHERE id=1").fetchone()
        return (row[0], row[1], row[2]) if row else None
