"""The Ray executor: the same plan, with its item-wise and model stages as Ray tasks.

Each source packet flows through the plan as a chain of Ray tasks (object refs handed from one
stage's task to the next, so Ray pipelines packets across stages and nodes); a window of
packets in flight bounds memory the way the local executor's channels do. Stages that touch
the daemon's own state run in the daemon (the "driver"): the source, `batch` (stateful),
`retrieve` (reads the collection), collection writes and sinks — collections stay single-writer
and idempotent by item id. Model stages in Ray tasks call the daemon back: over its RPC socket
(`job.embed` / `job.generate` / `job.rerank`, same host) or over its OpenAI-compatible HTTP
door (`/v1/embeddings`, `/v1/chat/completions`, `/v1/rerank`) with `ray_model_transport = "http"`.

Placement: the NodeSelector scores Ray's nodes (from `ray.nodes()`); each task stage is sent to
its chosen node with a soft node-affinity, and its resource hints become Ray's num_cpus /
num_gpus / memory.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from sage_daemon.core.config import JobsConfig
from sage_daemon.jobs import operators as ops
from sage_daemon.jobs import spec as s
from sage_daemon.jobs.local import CpuWorker, RunContext, StageProgress, _with_policy
from sage_daemon.jobs.planner import PhysicalStage, Plan
from sage_daemon.jobs.selector import NodeCapacity
from sage_daemon.jobs.vectorstore import CollectionStore

WINDOW_PER_STAGE = 4  # packets in flight per task stage


def is_driver_stage(stage: PhysicalStage) -> bool:
    op = stage.ops[0]
    return stage.kind in ("source", "write", "sink") or isinstance(op, (s.Batch, s.Retrieve))


class RpcModels:
    """Model calls from a Ray worker to the daemon's RPC socket (blocking client on a thread)."""

    def __init__(self, socket_path: str, priority: str):
        self.socket_path = socket_path
        self.priority = priority

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        from sage_client.rpc import RpcClient

        with RpcClient(self.socket_path, timeout=600) as client:
            return client.call(method, params)

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        result = await trio.to_thread.run_sync(self._call, "job.embed", {"model": model, "texts": texts, "priority": self.priority})
        vectors: list[list[float]] = result.vectors
        return vectors

    async def generate(self, model: str, request: Any, chat: bool) -> str:
        params: dict[str, Any] = {
            "model": model, "max_tokens": request.sampling.max_tokens, "temperature": request.sampling.temperature,
            "seed": request.sampling.seed, "priority": self.priority,
        }
        if request.messages is not None:
            params["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        else:
            params["prompt"] = request.prompt
        text: str = (await trio.to_thread.run_sync(self._call, "job.generate", params)).text
        return text

    async def rerank(self, model: str, query: str, documents: list[str]) -> list[float]:
        params = {"model": model, "query": query, "documents": documents, "priority": self.priority}
        result = await trio.to_thread.run_sync(self._call, "job.rerank", params)
        return [float(x) for x in result.scores]


class HttpModels:
    """Model calls from a Ray worker to a daemon's OpenAI-compatible HTTP door."""

    def __init__(self, base_url: str, priority: str):
        self.base_url = base_url.rstrip("/")
        self.headers = {"X-SAGE-Priority": priority}

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        import httpx

        response = httpx.post(f"{self.base_url}{path}", json=body, headers=self.headers, timeout=600)
        response.raise_for_status()
        return response.json()

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        data = await trio.to_thread.run_sync(self._post, "/v1/embeddings", {"model": model, "input": texts})
        return [row["embedding"] for row in sorted(data["data"], key=lambda r: r["index"])]

    async def generate(self, model: str, request: Any, chat: bool) -> str:
        sampling = {"max_tokens": request.sampling.max_tokens, "temperature": request.sampling.temperature, "seed": request.sampling.seed}
        if request.messages is not None:
            body = {"model": model, "messages": [{"role": m.role, "content": m.content} for m in request.messages], **sampling}
            data = await trio.to_thread.run_sync(self._post, "/v1/chat/completions", body)
            content: str = data["choices"][0]["message"]["content"]
            return content
        data = await trio.to_thread.run_sync(self._post, "/v1/completions", {"model": model, "prompt": request.prompt, **sampling})
        text: str = data["choices"][0]["text"]
        return text

    async def rerank(self, model: str, query: str, documents: list[str]) -> list[float]:
        data = await trio.to_thread.run_sync(self._post, "/v1/rerank", {"model": model, "query": query, "documents": documents})
        return rerank_scores(data, len(documents))


def rerank_scores(data: Any, n: int) -> list[float]:
    """A /v1/rerank reply (`results`: {index, relevance_score}, best first, maybe top_n only) as
    one score per document in the documents' order; a document the reply left out scores -inf."""
    scores = [float("-inf")] * n
    for row in data["results"]:
        index = int(row["index"])
        if not 0 <= index < n:
            raise ValueError(f"/v1/rerank: result index {index} outside the {n} documents")
        scores[index] = float(row["relevance_score"])
    return scores


def run_stage_task(stage: PhysicalStage, items: list[Any], transport: str, target: str, priority: str, job_id: str) -> tuple[list[Any], int, list[str]]:
    """The body of one Ray task: one stage over one packet. Returns (items, skipped, messages)."""
    messages: list[str] = []
    progress = [StageProgress(stage.name, stage.ops_label, stage.kind, stage.parallelism) for _ in range(stage.index + 1)]

    def on_error(name: str, key: str, message: str) -> None:
        messages.append(f"stage {name!r} skipped item {key}: {message}")

    models = RpcModels(target, priority) if transport == "rpc" else HttpModels(target, priority)
    ctx = RunContext(job_id, models, CollectionStore.__new__(CollectionStore), "", "", progress, on_item_error=on_error)
    if stage.kind == "cpu":
        out, skipped = CpuWorker(stage, ctx).process(items)
        return out, skipped, messages

    async def model_stage() -> list[Any]:
        async def to_thread(fn: Callable[..., Any], *args: Any) -> Any:
            return await trio.to_thread.run_sync(fn, *args)

        return await _with_policy(stage, items, ctx, lambda b: ops.model_apply(stage, b, models, ctx.collections, to_thread, f"{job_id}-{stage.name}"))

    out = trio.run(model_stage)
    return out, progress[stage.index].errors, messages


class RayRunner:
    def __init__(self, config: JobsConfig, socket_path: str, http_url: str):
        self.config = config
        self.socket_path = socket_path
        self.http_url = config.ray_daemon_url or http_url
        self._node_ids: dict[str, str] = {}
        self._task: Any = None

    def start(self) -> None:
        """Join (or start) Ray. Blocking: call on a worker thread."""
        import ray

        if not ray.is_initialized():
            ray.init(
                address=self.config.ray_address or None, num_cpus=(self.config.ray_num_cpus or None) if not self.config.ray_address else None,
                include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
            )
        self._task = ray.remote(run_stage_task)

    def describe(self) -> str:
        import ray

        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        count = len(ray.nodes())  # type: ignore[no-untyped-call]
        return f"{count} node(s), {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"

    def nodes(self) -> list[NodeCapacity]:
        import ray

        out = []
        available = ray.available_resources()  # type: ignore[no-untyped-call]
        all_nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        single = len(all_nodes) == 1
        for node in all_nodes:
            if not node.get("Alive"):
                continue
            res = node.get("Resources", {})
            name = f"{node.get('NodeManagerHostname', 'ray')}/{node['NodeID'][:8]}"
            self._node_ids[name] = node["NodeID"]
            out.append(NodeCapacity(
                node_id=name, cpus=res.get("CPU", 0.0), gpus=res.get("GPU", 0.0), memory=int(res.get("memory", 0)),
                used_cpus=max(0.0, res.get("CPU", 0.0) - available.get("CPU", 0.0)) if single else 0.0,
            ))
        return out

    async def run(self, plan: Plan, ctx: RunContext) -> str:
        stop = threading.Event()
        try:
            return await trio.to_thread.run_sync(self._run_blocking, plan, ctx, stop, trio.lowlevel.current_trio_token(), abandon_on_cancel=True)
        finally:
            stop.set()

    # ------------------------------------------------------------------ the driver (a worker thread)

    def _options(self, stage: PhysicalStage) -> dict[str, Any]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options: dict[str, Any] = {"num_cpus": stage.hints.cpus or (1 if stage.kind == "cpu" else 0), "max_retries": 0}
        if stage.hints.gpus:
            options["num_gpus"] = stage.hints.gpus
        if stage.hints.memory:
            options["memory"] = stage.hints.memory
        node = self._node_ids.get(stage.placement.node) if stage.placement else None
        if node:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        return options

    def _run_blocking(self, plan: Plan, ctx: RunContext, stop: threading.Event, token: trio.lowlevel.TrioToken) -> str:
        import ray

        stages = plan.stages
        transport = self.config.ray_model_transport
        target = self.socket_path if transport == "rpc" else self.http_url
        options = {st.index: self._options(st) for st in stages if not is_driver_stage(st)}
        driver = _Driver(plan, ctx, token)
        window = WINDOW_PER_STAGE * max(1, len(options))
        inflight: deque[tuple[Any, int]] = deque()  # (ref of the last task of a run of task stages, index of that stage)

        def advance(items: list[Any], index: int) -> None:
            """Push items on from stage `index`: driver stages here, the next task stage as a Ray task."""
            while index < len(stages) and items:
                stage = stages[index]
                if is_driver_stage(stage):
                    items = driver.apply(stage, items)
                    index += 1
                    continue
                ctx.progress[index].items_in += len(items)
                ref = self._task.options(**options[index]).remote(stage, items, transport, target, plan.priority, ctx.job_id)
                inflight.append((ref, index))
                return

        def settle(block: bool) -> None:
            while inflight and (block or len(inflight) >= window):
                if stop.is_set():
                    raise _Stopped()
                ref, last = inflight[0]
                ready, _ = ray.wait([ref], timeout=0.1)
                if not ready:
                    continue
                inflight.popleft()
                out, skipped, messages = ray.get(ref)
                stage = stages[last]
                ctx.progress[last].items_out += len(out)
                ctx.progress[last].errors += skipped
                for message in messages:
                    trio.from_thread.run_sync(functools.partial(ctx.on_item_error, stage.name, "", message), trio_token=token)
                advance(out, last + 1)

        try:
            source = ops.packets(ops.source_items(stages[0].ops[0], ctx.base_dir, ctx.allowed_roots))
            while packet := source():
                if stop.is_set():
                    return ""
                ctx.progress[0].items_in += len(packet)
                ctx.progress[0].items_out += len(packet)
                advance(packet, 1)
                settle(block=False)
            settle(block=True)
            for index, stage in enumerate(stages):  # flush stateful batch stages, in order
                if isinstance(stage.ops[0], s.Batch):
                    advance(driver.flush(stage), index + 1)
                    settle(block=True)
            for st in ctx.progress:
                st.done = True
            return driver.close()
        except BaseException:
            for ref, _ in inflight:
                ray.cancel(ref, force=True)
            driver.close()
            raise


class _Stopped(Exception):
    """The job was cancelled while the driver thread waited on Ray."""


class _Driver:
    """Driver-side stages, applied in the daemon: batch, retrieve, collection writes, sinks."""

    def __init__(self, plan: Plan, ctx: RunContext, token: trio.lowlevel.TrioToken):
        self.plan = plan
        self.ctx = ctx
        self.token = token
        self.batches: dict[int, ops.BatchOp] = {}
        self.writers: dict[int, ops.JsonlWriter] = {}

    def apply(self, stage: PhysicalStage, items: list[Any]) -> list[Any]:
        ctx, op = self.ctx, stage.ops[0]
        progress = ctx.progress[stage.index]
        progress.items_in += len(items)
        if isinstance(op, s.Batch):
            batcher = self.batches.setdefault(stage.index, ops.BatchOp(op.size))
            out = [b for item in items for b in batcher.push(item)]
        elif isinstance(op, s.Retrieve):
            async def retrieve() -> list[Any]:
                async def to_thread(fn: Callable[..., Any], *args: Any) -> Any:
                    return await trio.to_thread.run_sync(fn, *args)

                return await _with_policy(stage, items, ctx, lambda b: ops.model_apply(stage, b, ctx.models, ctx.collections, to_thread, f"{ctx.job_id}-{stage.name}"))

            out = trio.from_thread.run(retrieve, trio_token=self.token)
        elif isinstance(op, s.Index):
            ops.write_collection(op, items, ctx.collections, ops.model_of_vectors(stage.index, self.plan.stages))
            out = items if stage.kind == "write" else []
            if stage.kind == "sink":
                ctx.result_location = f"collection:{op.collection}"
                progress.items_out += len(items)
        else:
            writer = self.writers.get(stage.index)
            if writer is None:
                if isinstance(op, s.ToJsonl):
                    writer = ops.JsonlWriter(ops.sink_path(ctx.base_dir, op.path, ctx.allowed_roots), op.exclude)
                else:
                    writer = ops.JsonlWriter(ctx.results_path, op.exclude, op.limit)  # type: ignore[attr-defined]
                self.writers[stage.index] = writer
                ctx.result_location = writer.path
            writer.write(items)
            progress.items_out += len(items)
            return []
        progress.items_out += len(out) if stage.kind != "sink" else 0
        return out

    def flush(self, stage: PhysicalStage) -> list[Any]:
        batcher = self.batches.get(stage.index)
        out = batcher.flush() if batcher else []
        self.ctx.progress[stage.index].items_out += len(out)
        return out

    def close(self) -> str:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
        if not self.ctx.result_location:
            sink = self.plan.stages[-1]
            if isinstance(sink.ops[0], s.Collect):
                ops.JsonlWriter(self.ctx.results_path, []).close()  # no items reached it: an empty result
                self.ctx.result_location = self.ctx.results_path
        return self.ctx.result_location
