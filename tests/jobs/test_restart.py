"""A daemon killed with SIGKILL mid-job: intact database, job `interrupted`, retry without duplicates."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.jobs.conftest import Ctl, start_daemon, write_pipeline

N = 300


@pytest.mark.slow
def test_sigkill_mid_job_then_restart_and_retry(tmp_path: Path) -> None:
    root = tmp_path / "daemon"
    pipeline = f"""
name = "killed"
[[stages]]
op = "from_items"
items = [{", ".join(f'{{id = "k{n}", text = "item number {n} of the killed job"}}' for n in range(N))}]
[[stages]]
op = "map"
fn = "tests.jobs.helpers:slow"
parallelism = 2
[[stages]]
op = "embed"
batch_size = 8
[[stages]]
op = "to_collection"
collection = "kill"
batch_size = 8
"""
    daemon = start_daemon(root)
    try:
        ctl = Ctl(daemon.socket)
        job = ctl.json("job", "submit", write_pipeline(tmp_path, "killed.toml", pipeline))
        deadline = time.monotonic() + 60
        while ctl.json("job", "show", str(job["id"]))["stages"][-1]["items_out"] < 16:
            assert time.monotonic() < deadline, "the job never wrote to its collection"
            time.sleep(0.2)
        daemon.signal(signal.SIGKILL)
        assert daemon.wait() == -signal.SIGKILL
    finally:
        daemon.stop()

    database = root / "state" / "jobs.sqlite"
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT state FROM jobs WHERE id = ?", (job["id"],)).fetchone() == ("running",)

    restarted = start_daemon(root)
    try:
        ctl = Ctl(restarted.socket)
        shown = ctl.json("job", "show", str(job["id"]))
        assert shown["job"]["state"] == "interrupted" and "retry" in shown["job"]["error"]
        partial = ctl.json("collection", "show", "kill")["count"]
        assert 0 < partial < N
        retried = ctl.json("job", "retry", str(job["id"]), "--wait", timeout=180)
        assert retried["job"]["state"] == "succeeded" and retried["job"]["attempt"] == 2
        assert ctl.json("collection", "show", "kill")["count"] == N  # nothing lost, nothing twice
        logs = ctl("job", "logs", str(job["id"])).stdout
        assert logs.index("interrupted") < logs.index("retry (attempt 2)") < logs.index("succeeded")
    finally:
        restarted.stop()
