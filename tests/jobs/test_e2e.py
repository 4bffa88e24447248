"""End to end through a real daemon (subprocess, real engines) and sagectl."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import REPO
from tests.jobs.conftest import Ctl, write_pipeline

ITEMS = "[" + ", ".join(f'{{id = "item-{n}", n = {n}, text = "number {n}"}}' for n in range(6)) + "]"


def items_pipeline(fn: str, on_error: str, sink: str = "collect") -> str:
    return f"""
name = "policy"
on_error = "{on_error}"
[[stages]]
op = "from_items"
items = {ITEMS}
[[stages]]
op = "map"
fn = "{fn}"
[[stages]]
op = "{sink}"
"""


def test_rag_ingest_then_ask_then_retry_without_duplicates(ctl: Ctl) -> None:
    run = ctl("job", "run", str(REPO / "examples" / "rag.toml"))
    assert run.returncode == 0, run.stderr + run.stdout
    assert "succeeded" in run.stdout and "collection:docs" in run.stdout
    docs = {c["name"]: c for c in ctl.json("collection", "list")["collections"]}["docs"]
    assert docs["count"] > 10 and docs["dimensions"] == 384 and docs["model"] == "minilm"

    jobs = ctl.json("job", "list")["jobs"]
    job_id = next(j["id"] for j in jobs if j["name"] == "rag-ingest")
    detail = ctl.json("job", "show", str(job_id))
    stages = {st["name"]: st for st in detail["stages"]}
    assert stages["embed"]["items_in"] == stages["chunk"]["items_out"] == docs["count"]
    assert all(st["node"] and st["reason"].startswith("balanced") for st in detail["stages"])
    shown = ctl("job", "show", str(job_id))
    assert "PLACEMENT REASON" in shown.stdout and "balanced:" in shown.stdout

    retried = ctl("job", "retry", str(job_id), "--wait")
    assert retried.returncode == 0 and "succeeded (attempt 2)" in retried.stdout, retried.stdout + retried.stderr
    assert ctl.json("collection", "show", "docs")["count"] == docs["count"]  # upserts by chunk id

    answer = ctl.json("ask", "How do I run the test suite?")
    assert answer["answer"].strip() and answer["sources"]
    assert all("#" in source for source in answer["sources"])  # chunk ids: path#n


def test_error_policies_name_the_stage_and_the_item(ctl: Ctl, tmp_path: Path) -> None:
    failing = ctl("job", "submit", write_pipeline(tmp_path, "fail.toml", items_pipeline("tests.jobs.helpers:fail_on_three", "fail")), "--wait")
    assert failing.returncode == 1
    assert "stage 'map' failed on item 'item-3': ValueError: three is not allowed" in failing.stdout

    skipping = ctl.json("job", "submit", write_pipeline(tmp_path, "skip.toml", items_pipeline("tests.jobs.helpers:fail_on_three", "skip")), "--wait")
    assert skipping["job"]["state"] == "succeeded"
    job_id = skipping["job"]["id"]
    mapped = skipping["stages"][1]
    assert (mapped["items_in"], mapped["items_out"], mapped["errors"]) == (6, 5, 1)
    logs = ctl("job", "logs", str(job_id))
    assert "stage 'map' skipped item 'item-3': ValueError: three is not allowed" in logs.stdout
    results = ctl.json("job", "show", str(job_id))["job"]["result_location"]
    assert Path(results).read_text().count("\n") == 5

    retrying = ctl.json("job", "submit", write_pipeline(tmp_path, "retry.toml", items_pipeline("tests.jobs.helpers:flaky", "retry:1")), "--wait")
    assert retrying["job"]["state"] == "succeeded" and retrying["stages"][1]["items_out"] == 6


def test_bad_file_is_one_line_with_the_stage_and_line(ctl: Ctl, tmp_path: Path) -> None:
    bad = items_pipeline("tests.jobs.helpers:upper", "fail").replace('op = "map"', 'op = "mapp"')
    done = ctl("job", "submit", write_pipeline(tmp_path, "bad.toml", bad))
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "bad.toml:8: stage 2 (mapp): field op: unknown operator 'mapp'" in done.stderr
    missing_model = items_pipeline("tests.jobs.helpers:upper", "fail").replace('op = "collect"', 'op = "embed"\nmodel = "gpt-9"\n[[stages]]\nop = "collect"')
    done = ctl("job", "submit", write_pipeline(tmp_path, "model.toml", missing_model))
    assert done.returncode == 1 and "field model: no model 'gpt-9' in the pool" in done.stderr
    assert ctl("job", "show", "99999").returncode == 1


def test_cancel_stops_a_running_job_within_a_second_and_engines_stay_healthy(ctl: Ctl, tmp_path: Path) -> None:
    slow = f"""
name = "slow"
[[stages]]
op = "from_items"
items = [{", ".join(f'{{id = "s{n}", text = "slow item {n}"}}' for n in range(400))}]
[[stages]]
op = "map"
fn = "tests.jobs.helpers:slow"
[[stages]]
op = "embed"
[[stages]]
op = "to_collection"
collection = "cancelled"
"""
    job = ctl.json("job", "submit", write_pipeline(tmp_path, "slow.toml", slow))
    deadline = time.monotonic() + 30
    while ctl.json("job", "show", str(job["id"]))["stages"][2]["items_out"] == 0:
        assert time.monotonic() < deadline, "the slow job never embedded anything"
        time.sleep(0.2)
    started = time.monotonic()
    cancelled = ctl.json("job", "cancel", str(job["id"]))
    assert cancelled["state"] == "cancelled"
    assert time.monotonic() - started < 1.0 + 0.5  # + sagectl's own start-up
    detail = ctl.json("job", "show", str(job["id"]))
    assert detail["stages"][0]["items_out"] < 400
    models = {m["id"]: m for m in ctl.json("models")["models"]}
    assert models["minilm"]["state"] == "ready"
    # The engine still serves: a small job right after succeeds.
    quick = ctl.json("job", "submit", write_pipeline(tmp_path, "quick.toml", slow.replace("range", "range") .replace('fn = "tests.jobs.helpers:slow"', 'fn = "tests.jobs.helpers:upper"').replace('collection = "cancelled"', 'collection = "after-cancel"')), "--wait")
    assert quick["job"]["state"] == "succeeded"
    assert ctl.json("collection", "show", "after-cancel")["count"] == 400
