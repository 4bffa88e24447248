"""Stored responses of the Responses API (`store: true`): what `GET /v1/responses/{id}` answers
and what `previous_response_id` continues.

One SQLite table in WAL mode (synchronous=NORMAL: a committed row survives the process being
killed; only a power loss may take the last commits). Each row is a response's JSON as it was
sent and its conversation (the chat messages `previous_response_id` rebuilds, msgspec JSON of
the ChatMessage tuple), owned by the API key that made it: another key's row reads as absent.
Rows expire `ttl_s` after they were written, and at most `max_rows` are kept (the oldest go).

Blocking: the door calls it through `trio.to_thread.run_sync`. One connection shared by those
threads, behind a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from sage_daemon.engines.base import ChatMessage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    response BLOB NOT NULL,
    conversation BLOB NOT NULL
)
"""
_conversation_decoder = msgspec.json.Decoder(tuple[ChatMessage, ...])


class ResponseStore:
    """Responses by id and owner (an API-key fingerprint; "" when keys are off)."""

    def __init__(self, path: Path, ttl_s: float, max_rows: int):
        if ttl_s <= 0 or max_rows < 1:
            raise ValueError(f"ResponseStore needs ttl_s > 0 and max_rows >= 1, not {ttl_s} and {max_rows}")
        self.path = Path(path)
        self.ttl_s = ttl_s
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.execute("CREATE INDEX IF NOT EXISTS responses_created ON responses (created)")
        self._db.execute("CREATE INDEX IF NOT EXISTS responses_expires ON responses (expires)")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the response store is closed")
        return self._db

    def put(self, id: str, owner: str, response_json: bytes, conversation: Sequence[ChatMessage], now: float | None = None) -> None:  # noqa: A002
        """Store (or replace) a response; then drop what expired and what is beyond max_rows."""
        now = time.time() if now is None else now
        blob = msgspec.json.encode(tuple(conversation))
        with self._lock:
            db = self._conn()
            db.execute(
                "INSERT OR REPLACE INTO responses (id, owner, created, expires, response, conversation) VALUES (?, ?, ?, ?, ?, ?)",
                (id, owner, now, now + self.ttl_s, bytes(response_json), blob),
            )
            self._expire_locked(db, now)

    def get(self, id: str, owner: str, now: float | None = None) -> tuple[bytes, tuple[ChatMessage, ...]] | None:  # noqa: A002
        """The response's JSON and conversation; None when absent, expired or another owner's."""
        now = time.time() if now is None else now
        with self._lock:
            row = self._conn().execute(
                "SELECT response, conversation FROM responses WHERE id = ? AND owner = ? AND expires > ?", (id, owner, now)
            ).fetchone()
        if row is None:
            return None
        return bytes(row[0]), _conversation_decoder.decode(row[1])

    def delete(self, id: str, owner: str) -> bool:  # noqa: A002
        """Whether there was such a response of this owner (now gone)."""
        with self._lock:
            cursor = self._conn().execute("DELETE FROM responses WHERE id = ? AND owner = ?", (id, owner))
        return cursor.rowcount > 0

    def expire(self, now: float | None = None) -> int:
        """Drop the expired rows and the oldest beyond max_rows; how many went."""
        now = time.time() if now is None else now
        with self._lock:
            return self._expire_locked(self._conn(), now)

    def _expire_locked(self, db: sqlite3.Connection, now: float) -> int:
        dropped = db.execute("DELETE FROM responses WHERE expires <= ?", (now,)).rowcount
        dropped += db.execute(
            "DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created DESC, rowid DESC LIMIT -1 OFFSET ?)", (self.max_rows,)
        ).rowcount
        return dropped

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()
