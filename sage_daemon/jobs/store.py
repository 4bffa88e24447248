"""The job store: SQLite in WAL mode in the state directory.

Jobs (spec, state, times, error, where the results are), their state changes and log lines
(`events`), and per-stage progress (items in/out, errors, the node selector's decision). Every
change is one short transaction, so a daemon killed with SIGKILL restarts with an intact
database; jobs it finds `running` were interrupted. All methods block: the manager calls them
on a worker thread, one at a time.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec

from sage_client.protocol import JOB_STATES, TERMINAL_JOB_STATES, JobState

# The protocol's spelling of the states (sagectl and the handlers use the same names).
TERMINAL = TERMINAL_JOB_STATES
STATES = JOB_STATES

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    base_dir TEXT NOT NULL DEFAULT '',
    python_objects INTEGER NOT NULL DEFAULT 0,
    executor TEXT NOT NULL DEFAULT 'local',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempt INTEGER NOT NULL DEFAULT 1,
    error TEXT NOT NULL DEFAULT '',
    result_location TEXT NOT NULL DEFAULT '',
    owner_uid INTEGER,
    owner_role TEXT NOT NULL DEFAULT 'admin'
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS stages (
    job_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    ops TEXT NOT NULL,
    kind TEXT NOT NULL,
    parallelism INTEGER NOT NULL,
    node TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    items_in INTEGER NOT NULL DEFAULT 0,
    items_out INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);
"""


class JobRow(msgspec.Struct):
    id: int
    name: str
    state: JobState
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempt: int
    error: str
    result_location: str
    executor: str
    base_dir: str
    python_objects: bool
    spec: dict[str, Any]
    source: str
    owner_uid: int | None = None  # the RPC peer that submitted it; None: a store from before owners were kept
    owner_role: str = "admin"  # that peer's role when it submitted: the job is planned and run with it


class StageRow(msgspec.Struct):
    index: int
    name: str
    ops: str
    kind: str
    parallelism: int
    node: str
    reason: str
    items_in: int
    items_out: int
    errors: int
    done: bool


class EventRow(msgspec.Struct):
    seq: int
    job_id: int
    ts: float
    level: str
    message: str


class JobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Stores written before jobs had owners get the columns; their jobs count as the
        daemon's own (admin), which is who could submit them then without a group."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
        if "owner_uid" not in columns:
            self.db.execute("ALTER TABLE jobs ADD COLUMN owner_uid INTEGER")
        if "owner_role" not in columns:
            self.db.execute("ALTER TABLE jobs ADD COLUMN owner_role TEXT NOT NULL DEFAULT 'admin'")

    def close(self) -> None:
        self.db.close()

    def _tx(self, statements: list[tuple[str, tuple[Any, ...]]]) -> sqlite3.Cursor | None:
        cursor = None
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                cursor = self.db.execute(sql, args)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return cursor

    def create(
        self, name: str, spec: dict[str, Any], source: str, base_dir: str, python_objects: bool, executor: str,
        owner_uid: int | None = None, owner_role: str = "admin",
    ) -> int:
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self.db.execute(
                "INSERT INTO jobs (name, state, spec, source, base_dir, python_objects, executor, created_at, owner_uid, owner_role) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, json.dumps(spec), source, base_dir, int(python_objects), executor, now, owner_uid, owner_role),
            )
            job_id = cursor.lastrowid
            assert job_id is not None  # an INSERT sets it
            self.db.execute("INSERT INTO events (job_id, ts, level, message) VALUES (?, ?, 'state', ?)", (job_id, now, "queued"))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return job_id

    def set_state(self, job_id: int, state: str, error: str = "", result_location: str | None = None, message: str = "") -> None:
        now = time.time()
        statements: list[tuple[str, tuple[Any, ...]]] = []
        if state == "running":
            statements.append(("UPDATE jobs SET state = ?, started_at = ?, finished_at = NULL, error = '' WHERE id = ?", (state, now, job_id)))
        elif state == "queued":
            statements.append(("UPDATE jobs SET state = ?, attempt = attempt + 1, started_at = NULL, finished_at = NULL, error = '' WHERE id = ?", (state, job_id)))
        else:
            statements.append(("UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?", (state, now, error, job_id)))
        if result_location is not None:
            statements.append(("UPDATE jobs SET result_location = ? WHERE id = ?", (result_location, job_id)))
        statements.append(("INSERT INTO events (job_id, ts, level, message) VALUES (?, ?, 'state', ?)", (job_id, now, state + (f": {message or error}" if message or error else ""))))
        self._tx(statements)

    def log(self, job_id: int, level: str, message: str) -> None:
        self.db.execute("INSERT INTO events (job_id, ts, level, message) VALUES (?, ?, ?, ?)", (job_id, time.time(), level, message))

    def set_stages(self, job_id: int, stages: list[StageRow]) -> None:
        statements: list[tuple[str, tuple[Any, ...]]] = [("DELETE FROM stages WHERE job_id = ?", (job_id,))]
        for st in stages:
            statements.append((
                "INSERT INTO stages (job_id, idx, name, ops, kind, parallelism, node, reason, items_in, items_out, errors, done) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, st.index, st.name, st.ops, st.kind, st.parallelism, st.node, st.reason, st.items_in, st.items_out, st.errors, int(st.done)),
            ))
        self._tx(statements)

    def update_progress(self, job_id: int, counters: list[tuple[int, int, int, int, bool]]) -> None:
        """(index, items_in, items_out, errors, done) per stage, in one transaction."""
        self._tx([
            ("UPDATE stages SET items_in = ?, items_out = ?, errors = ?, done = ? WHERE job_id = ? AND idx = ?", (i, o, e, int(d), job_id, idx))
            for idx, i, o, e, d in counters
        ])

    def mark_interrupted(self) -> list[int]:
        """Jobs left `running` by a daemon that stopped without finishing them."""
        ids = [r[0] for r in self.db.execute("SELECT id FROM jobs WHERE state = 'running'")]
        for job_id in ids:
            self.set_state(job_id, "interrupted", error="the daemon stopped while the job was running; `sagectl job retry` runs it again")
        return ids

    def get(self, job_id: int) -> JobRow | None:
        row = self.db.execute(
            "SELECT id, name, state, created_at, started_at, finished_at, attempt, error, result_location, executor, base_dir, python_objects, spec, source, owner_uid, owner_role FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        return None if row is None else self._job(row)

    @staticmethod
    def _job(row: tuple[Any, ...]) -> JobRow:
        return JobRow(
            row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10],
            bool(row[11]), json.loads(row[12]), row[13], row[14], row[15],
        )

    def list(self, state: str = "", limit: int = 50, owner_uid: int | None = None) -> builtins.list[JobRow]:
        """Newest first; only jobs in `state` and of `owner_uid` when given."""
        clauses: list[str] = []
        args: list[Any] = []
        if state:
            clauses.append("state = ?")
            args.append(state)
        if owner_uid is not None:
            clauses.append("owner_uid = ?")
            args.append(owner_uid)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self.db.execute(
            f"SELECT id, name, state, created_at, started_at, finished_at, attempt, error, result_location, executor, base_dir, python_objects, spec, source, owner_uid, owner_role FROM jobs {where} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [self._job(r) for r in rows]

    def queued(self) -> builtins.list[int]:
        return [r[0] for r in self.db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id")]

    def stages(self, job_id: int) -> builtins.list[StageRow]:
        rows = self.db.execute(
            "SELECT idx, name, ops, kind, parallelism, node, reason, items_in, items_out, errors, done FROM stages WHERE job_id = ? ORDER BY idx", (job_id,)
        ).fetchall()
        return [StageRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], bool(r[10])) for r in rows]

    def events(self, job_id: int, after: int = 0, limit: int = 1000) -> builtins.list[EventRow]:
        rows = self.db.execute("SELECT seq, job_id, ts, level, message FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?", (job_id, after, limit)).fetchall()
        return [EventRow(*r) for r in rows]
