"""The local executor without engines (back-pressure, keyed routing) and the manager in-process."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import trio

from sage_daemon.jobs.api import Pipeline
from sage_daemon.jobs.local import RunContext, progress_for, run_local
from sage_daemon.jobs.planner import compile_plan
from sage_daemon.jobs.vectorstore import CollectionStore
from tests.jobs.test_planner import MODELS, one_node


class NoModels:
    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        return [[float(len(t)), 1.0] for t in texts]

    async def generate(self, model: str, request: Any, chat: bool) -> str:
        return "answer"

    async def rerank(self, model: str, query: str, documents: list[str]) -> list[float]:
        return [float(len(d)) for d in documents]


def context(plan: Any, tmp_path: Path, capacity: int = 2) -> RunContext:
    return RunContext("t", NoModels(), CollectionStore(tmp_path / "collections"), str(tmp_path), str(tmp_path / "results.jsonl"), progress_for(plan), channel_capacity=capacity)


async def test_a_slow_stage_holds_back_the_source(tmp_path: Path) -> None:
    def slow(item: Any) -> Any:
        time.sleep(0.002)
        return item

    env = Pipeline("bp")
    env.from_items([{"id": n} for n in range(3000)]).map(slow).collect()
    plan = compile_plan(env.spec(), MODELS, one_node())
    ctx = context(plan, tmp_path, capacity=2)
    gaps: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_local, plan, ctx)
        while not ctx.progress[-1].done:
            gaps.append(ctx.progress[0].items_out - ctx.progress[1].items_in)
            await trio.sleep(0.01)
    assert ctx.progress[-1].items_in == 3000
    # The source is never more than (channel capacity + one packet in hand) packets of 32 ahead.
    assert max(gaps) <= (2 + 1) * 32, max(gaps)
    assert len(Path(ctx.results_path).read_text().splitlines()) == 3000


async def test_key_by_sends_a_key_to_one_worker(tmp_path: Path) -> None:
    seen: dict[str, set[int]] = {}
    lock = threading.Lock()

    class Record:
        def execute(self, item: dict[str, Any]) -> dict[str, Any]:
            with lock:
                seen.setdefault(item["user"], set()).add(id(self))
            return item

    env = Pipeline("keys")
    env.from_items([{"id": n, "user": f"u{n % 5}"} for n in range(200)]).key_by("user").map(Record, parallelism=3).collect()
    plan = compile_plan(env.spec(), MODELS, one_node())
    ctx = context(plan, tmp_path)
    await run_local(plan, ctx)
    assert len(seen) == 5 and all(len(workers) == 1 for workers in seen.values())
    assert len({next(iter(w)) for w in seen.values()}) > 1  # the keys did spread over workers


async def test_manager_limits_concurrent_jobs_and_queues_the_rest(daemon: Any) -> None:
    jobs = daemon.services.jobs
    release = threading.Event()

    def wait_for_release(item: Any) -> Any:
        release.wait(10)
        return item

    ids = []
    for n in range(3):
        env = Pipeline(f"held-{n}")
        env.from_items([{"id": "x"}]).map(wait_for_release).collect()
        ids.append((await jobs.submit(env.spec())).id)
    with trio.fail_after(10):
        while [(await jobs.summary(i)).state for i in ids] != ["running", "running", "queued"]:
            await trio.sleep(0.05)
    release.set()
    with trio.fail_after(20):
        details = [await jobs.wait(i, results=5) for i in ids]
    assert [d.job.state for d in details] == ["succeeded"] * 3
    assert details[0].results == [{"id": "x"}]
    listed = await jobs.list()
    assert {j.id for j in listed} >= set(ids)
