"""The Ray executor runs the same plan as the local executor, with the same results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from sage_daemon.core.config import JobsConfig
from sage_daemon.jobs import spec as s
from sage_daemon.jobs.local import RunContext, progress_for
from sage_daemon.jobs.planner import compile_plan
from sage_daemon.jobs.vectorstore import CollectionStore
from tests.jobs.conftest import Ctl, write_pipeline
from tests.jobs.test_planner import MODELS

ray = pytest.importorskip("ray")

PIPELINE = """
name = "same"
on_error = "skip"
[[stages]]
op = "from_items"
items = [{ITEMS}]
[[stages]]
op = "map"
fn = "tests.jobs.helpers:fail_on_three"
[[stages]]
op = "map"
fn = "tests.jobs.helpers:upper"
parallelism = 2
[[stages]]
op = "chunk"
size = 40
overlap = 8
[[stages]]
op = "embed"
batch_size = 16
[[stages]]
op = "collect"
exclude = []
""".replace("{ITEMS}", ", ".join(f'{{id = "d{n}", n = {n}, text = "document {n}: ' + "the quick brown fox jumps over the lazy dog " * 3 + '"}' for n in range(24)))


@pytest.fixture(scope="module")
def local_ray() -> Any:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}})
    yield ray
    ray.shutdown()


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


@pytest.mark.slow
async def test_ray_executor_gives_the_local_executors_results(ctl: Ctl, shared_daemon: Any, local_ray: Any, tmp_path: Path) -> None:
    from sage_daemon.jobs.ray_executor import RayRunner, RpcModels

    local = await trio.to_thread.run_sync(lambda: ctl.json("job", "submit", write_pipeline(tmp_path, "same.toml", PIPELINE), "--wait"))
    assert local["job"]["state"] == "succeeded"
    local_rows = [json.loads(line) for line in Path(local["job"]["result_location"]).read_text().splitlines()]

    runner = RayRunner(JobsConfig(backend="ray", ray_num_cpus=2), str(shared_daemon.socket), "")
    await trio.to_thread.run_sync(runner.start)
    from sage_daemon.jobs.selector import NodeSelector

    selector = NodeSelector(runner.nodes())
    plan = compile_plan(s.load_toml(PIPELINE), MODELS, selector)
    assert all(st.placement is not None and "/" in st.placement.node for st in plan.stages)  # Ray's nodes
    skipped: list[str] = []
    ctx = RunContext(
        "ray-test", RpcModels(str(shared_daemon.socket), "background"), CollectionStore(tmp_path / "collections"), str(tmp_path),
        str(tmp_path / "ray-results.jsonl"), progress_for(plan), on_item_error=lambda stage, key, message: skipped.append(message),
    )
    with trio.fail_after(120):
        location = await runner.run(plan, ctx)
    ray_rows = [json.loads(line) for line in Path(location).read_text().splitlines()]

    local_by_id, ray_by_id = by_id(local_rows), by_id(ray_rows)
    assert set(local_by_id) == set(ray_by_id) and len(ray_by_id) > 24
    assert not any(key.startswith("d3#") for key in ray_by_id)  # the item that fails was skipped on both
    assert any("three is not allowed" in m for m in skipped)
    for key, row in local_by_id.items():
        assert ray_by_id[key]["text"] == row["text"]
        np.testing.assert_allclose(ray_by_id[key]["vector"], row["vector"], atol=1e-4)
    assert [p.items_out for p in ctx.progress] == [st["items_out"] for st in local["stages"]]


@pytest.mark.slow
def test_a_daemon_with_the_ray_backend_runs_jobs_on_ray(ctl: Ctl, tmp_path: Path) -> None:
    """`[jobs].backend = "ray"` end to end: the daemon's own job manager starts Ray, places the
    stages on Ray's nodes and gives the local executor's results."""
    from tests.jobs.conftest import start_daemon

    pipeline = write_pipeline(tmp_path, "same.toml", PIPELINE)
    local = ctl.json("job", "submit", pipeline, "--wait")
    process = start_daemon(tmp_path / "ray-daemon", "--set", "jobs.backend='ray'", "--set", "jobs.ray_num_cpus=2")
    try:
        on_ray = Ctl(process.socket).json("job", "submit", pipeline, "--wait", timeout=300)
    finally:
        process.stop()
    assert on_ray["job"]["state"] == "succeeded", on_ray["job"]
    assert all("/" in stage["node"] for stage in on_ray["stages"]), on_ray["stages"]  # Ray's node ids
    local_by_id = by_id([json.loads(line) for line in Path(local["job"]["result_location"]).read_text().splitlines()])
    ray_by_id = by_id([json.loads(line) for line in Path(on_ray["job"]["result_location"]).read_text().splitlines()])
    assert set(local_by_id) == set(ray_by_id)
    for key, row in local_by_id.items():
        assert ray_by_id[key]["text"] == row["text"]
        np.testing.assert_allclose(ray_by_id[key]["vector"], row["vector"], atol=1e-4)
    assert [st["items_out"] for st in on_ray["stages"]] == [st["items_out"] for st in local["stages"]]
