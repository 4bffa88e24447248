"""The Responses API's SQLite store: put/get/delete, owners, expiry, the row bound, durability
across reopening and across a process killed right after a put."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sage_daemon.engines.base import ChatMessage, ToolCall
from sage_daemon.http.response_store import ResponseStore

CONVERSATION = [
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", None, (ToolCall("call_a", "get_weather", '{"city": "Paris"}'),)),
    ChatMessage("tool", "18C", tool_call_id="call_a"),
    ChatMessage("assistant", "It is 18C."),
]
BODY = b'{"id":"resp_1","object":"response","status":"completed"}'


@pytest.fixture
def store(tmp_path: Path):  # noqa: ANN201
    s = ResponseStore(tmp_path / "state" / "responses.sqlite3", ttl_s=3600, max_rows=100)
    yield s
    s.close()


def test_put_get_delete(store: ResponseStore) -> None:
    assert store.get("resp_1", "") is None
    store.put("resp_1", "", BODY, CONVERSATION)
    got = store.get("resp_1", "")
    assert got is not None
    body, conversation = got
    assert body == BODY and conversation == tuple(CONVERSATION)
    assert store.delete("resp_1", "") is True
    assert store.get("resp_1", "") is None and store.delete("resp_1", "") is False


def test_put_replaces(store: ResponseStore) -> None:
    store.put("resp_1", "", BODY, CONVERSATION)
    store.put("resp_1", "", b"{}", CONVERSATION[:1])
    assert store.get("resp_1", "") == (b"{}", tuple(CONVERSATION[:1])) and len(store) == 1


def test_owners_do_not_see_each_other(store: ResponseStore) -> None:
    store.put("resp_1", "key-a", BODY, CONVERSATION)
    assert store.get("resp_1", "key-b") is None and store.get("resp_1", "") is None
    assert store.delete("resp_1", "key-b") is False, "another owner cannot delete it"
    assert store.get("resp_1", "key-a") is not None


def test_expiry(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.db", ttl_s=10, max_rows=100)
    store.put("old", "", BODY, CONVERSATION, now=1000.0)
    store.put("new", "", BODY, CONVERSATION, now=1005.0)
    assert store.get("old", "", now=1009.0) is not None
    assert store.get("old", "", now=1010.0) is None, "expired rows read as absent before they are dropped"
    assert store.expire(now=1012.0) == 1 and len(store) == 1
    assert store.get("new", "", now=1012.0) is not None
    assert store.expire(now=2000.0) == 1 and len(store) == 0
    store.close()


def test_max_rows_keeps_the_newest(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.db", ttl_s=3600, max_rows=3)
    for i in range(5):
        store.put(f"resp_{i}", "", BODY, CONVERSATION, now=1000.0 + i)
    assert len(store) == 3
    assert [store.get(f"resp_{i}", "", now=1010.0) is not None for i in range(5)] == [False, False, True, True, True]
    for i in range(5, 8):  # same timestamp: insertion order decides
        store.put(f"resp_{i}", "", BODY, CONVERSATION, now=1020.0)
    assert [store.get(f"resp_{i}", "", now=1021.0) is not None for i in range(8)] == [False] * 5 + [True] * 3
    assert store.expire(now=1021.0) == 0
    store.close()


def test_wal_mode_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = ResponseStore(path, ttl_s=3600, max_rows=10)
    store.put("resp_1", "o", BODY, CONVERSATION)
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError):
        store.get("resp_1", "o")
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    again = ResponseStore(path, ttl_s=3600, max_rows=10)
    assert again.get("resp_1", "o") == (BODY, tuple(CONVERSATION))
    again.close()


def test_survives_sigkill_after_put(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    script = (
        "import os, sys, signal\n"
        "from pathlib import Path\n"
        "from sage_daemon.engines.base import ChatMessage\n"
        "from sage_daemon.http.response_store import ResponseStore\n"
        "s = ResponseStore(Path(sys.argv[1]), ttl_s=3600, max_rows=10)\n"
        "s.put('resp_k', 'o', b'{\"id\":\"resp_k\"}', [ChatMessage('user', 'hi'), ChatMessage('assistant', 'yo')])\n"
        "print('stored', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "stored"
    store = ResponseStore(path, ttl_s=3600, max_rows=10)
    assert store.get("resp_k", "o") == (b'{"id":"resp_k"}', (ChatMessage("user", "hi"), ChatMessage("assistant", "yo")))
    store.close()


def test_threads_share_it(store: ResponseStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                rid = f"resp_{n}_{i}"
                store.put(rid, str(n), BODY, CONVERSATION)
                assert store.get(rid, str(n)) is not None
                if i % 2:
                    assert store.delete(rid, str(n))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(store) == 40


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        ResponseStore(Path("/nonexistent/x.db"), ttl_s=0, max_rows=1)
    with pytest.raises(ValueError):
        ResponseStore(Path("/nonexistent/x.db"), ttl_s=1, max_rows=0)
