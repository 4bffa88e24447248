"""The JobManager: submit, list, show, logs, cancel, wait, retry — jobs as managed state.

States: queued → running → succeeded | failed | cancelled, and interrupted for jobs that were
running when the daemon stopped (found `running` in the store at start-up, or cancelled by a
shutdown). At most `max_concurrent` jobs run at once; the rest wait queued, oldest first.
Everything a user sees is in the SQLite store; running jobs' counters are flushed to it twice a
second and read live by `show`/`watch` meanwhile.
"""

from __future__ import annotations

import builtins
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

from sage_client import protocol as p
from sage_daemon.control.api import ControlPlaneAPI, Priority, RequestMeta
from sage_daemon.core.config import JobsConfig
from sage_daemon.core.errors import ControlPlaneError, InvalidRequestError, InvalidStateError, NotFoundError, PermissionDeniedError
from sage_daemon.core.logging import log
from sage_daemon.engines.base import GenerationRequest
from sage_daemon.jobs import spec as s
from sage_daemon.jobs.access import Principal, daemon_principal, job_access, submit_refusal
from sage_daemon.jobs.local import RunContext, StageProgress, first_cause, progress_for, run_local
from sage_daemon.jobs.operators import ItemError
from sage_daemon.jobs.planner import ModelFacts, Plan, compile_plan
from sage_daemon.jobs.selector import NodeCapacity, NodeSelector
from sage_daemon.jobs.store import TERMINAL, JobRow, JobStore, StageRow
from sage_daemon.jobs.vectorstore import CollectionStore

logger = logging.getLogger("sage.jobs")
FLUSH_INTERVAL_S = 0.5


class JobNotFoundError(NotFoundError):
    """No job with that id: a 404 / `not_found`."""


class JobStateError(InvalidStateError):
    """The job cannot do that in its state (cancel an ended job): a 409 / `invalid_state`."""


class PlaneModels:
    """Model calls of a local job's stages: the control plane in-process, at the job's priority."""

    def __init__(self, plane: ControlPlaneAPI, priority: Priority, job_id: int):
        self.plane = plane
        self.priority = priority
        self.job_id = job_id
        self._ids = itertools.count(1)

    def _meta(self, kind: str) -> RequestMeta:
        return RequestMeta(request_id=f"job{self.job_id}-{kind}{next(self._ids)}", priority=self.priority, caller="job")

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        return (await self.plane.embed(model, texts, self._meta("e"))).vectors

    async def generate(self, model: str, request: GenerationRequest, chat: bool) -> str:
        stream = await self.plane.generate(model, "chat" if chat else "completion", request, self._meta("g"))
        text, _ = await stream.collect()
        return text

    async def rerank(self, model: str, query: str, documents: list[str]) -> list[float]:
        return list((await self.plane.rerank(model, query, documents, self._meta("r"))).scores)


@dataclass
class LiveJob:
    id: int
    plan: Plan
    progress: list[StageProgress]
    owner: Principal
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancel_requested: bool = False
    done: trio.Event = field(default_factory=trio.Event)


class JobManager:
    def __init__(
        self,
        config: JobsConfig,
        state_dir: Path,
        data_dir: Path,
        plane: ControlPlaneAPI,
        node: p.NodeInfo,
        reserved_interactive_slots: int = 1,
        stopping: Callable[[], bool] = lambda: False,
        http_url: str = "",
        socket_path: str = "",
    ):
        self.config = config
        self.store = JobStore(state_dir / "jobs.sqlite")
        self.results_dir = state_dir / "results"
        self.collections = CollectionStore(data_dir / "collections")
        self.plane = plane
        self.node = node
        self.reserved = reserved_interactive_slots
        self.stopping = stopping
        self.http_url = http_url
        self.socket_path = socket_path
        self.ray_runner: Any = None  # a RayRunner when backend = "ray", made in run()
        self.python_specs: dict[int, s.PipelineSpec] = {}  # specs with in-process callables
        self.live: dict[int, LiveJob] = {}
        self._db = trio.CapacityLimiter(1)  # one store call at a time (one SQLite connection)
        self._changed = trio.Event()
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ plumbing

    async def _store(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._db)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _changed_or(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._changed.wait()

    def model_facts(self) -> dict[str, ModelFacts]:
        # Through the plane's API (not its pool): slots_total is the configured `parallel` of an
        # LLM until its engine reports its own. On the trio thread (the pool reads trio's clock).
        return {info.id: ModelFacts(info.id, info.kind, max(1, info.slots_total)) for info in self.plane.list_models()}

    def selector(self, strategy: str) -> NodeSelector:
        if self.config.backend == "ray" and self.ray_runner is not None:
            nodes = self.ray_runner.nodes()
        else:
            nodes = [NodeCapacity.from_node_info(self.node)]
        return NodeSelector(nodes, strategy)  # type: ignore[arg-type]

    async def plan(self, spec: s.PipelineSpec, owner: Principal | None = None) -> Plan:
        """Check and compile; user modules are imported on a worker thread. A user peer's job may
        import only from [jobs].allowed_function_modules."""
        allowed = None if owner is None or owner.admin else tuple(self.config.allowed_function_modules)
        facts = self.model_facts()
        # The selector asks Ray for its nodes (blocking): on the worker thread, with the imports.
        return await trio.to_thread.run_sync(lambda: compile_plan(spec, facts, self.selector(spec.strategy), self.reserved, allowed))

    def allowed_roots(self, owner: Principal) -> tuple[str, ...] | None:
        """Where `owner`'s jobs may read and write files; None: anywhere (an admin)."""
        return None if owner.admin else tuple(self.config.allowed_roots)

    @staticmethod
    def owner_of(row: JobRow) -> Principal:
        return Principal(row.owner_uid if row.owner_uid is not None else os.geteuid(), "user" if row.owner_role == "user" else "admin")

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Mark jobs a dead daemon left running as interrupted, then start queued jobs as slots free."""
        if self.config.backend == "ray":
            from sage_daemon.jobs.ray_executor import RayRunner  # ray is an optional extra

            self.ray_runner = RayRunner(self.config, self.socket_path, self.http_url)
            await trio.to_thread.run_sync(self.ray_runner.start)
        interrupted = await self._store(self.store.mark_interrupted)
        if interrupted:
            log(logger, logging.WARNING, "jobs interrupted by the last stop", jobs=",".join(map(str, interrupted)))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    self._wake = trio.Event()
                    free = self.config.max_concurrent - len(self.live)
                    if free > 0:
                        for job_id in (await self._store(self.store.queued))[:free]:
                            if job_id not in self.live:
                                await self._start(job_id, nursery)
                    await self._wake.wait()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.collections.close)
                await trio.to_thread.run_sync(self.close)

    async def _start(self, job_id: int, nursery: trio.Nursery) -> None:
        row: JobRow = await self._store(self.store.get, job_id)
        owner = self.owner_of(row)
        try:
            spec = self.python_specs.get(job_id)
            if spec is None:
                spec = await trio.to_thread.run_sync(self._spec_of, row)
            # Planned with the submitter's rights as configured now: a module taken off the
            # allow-list since the submit is refused on retry.
            plan = await self.plan(spec, owner)
        except ControlPlaneError as exc:
            await self._store(self.store.set_state, job_id, "failed", exc.message)
            self._notify()
            return
        access = job_access(spec, row.base_dir)
        log(logger, logging.INFO, "job started", job=job_id, attempt=row.attempt, uid=owner.uid, role=owner.role, **access.fields())
        live = LiveJob(job_id, plan, progress_for(plan), owner)
        self.live[job_id] = live
        await self._store(self.store.set_stages, job_id, [_stage_row(n, sp) for n, sp in enumerate(live.progress)])
        await self._store(self.store.set_state, job_id, "running")
        self._notify()
        nursery.start_soon(self._run_job, live, row)

    def _spec_of(self, row: JobRow) -> s.PipelineSpec:
        if row.python_objects:
            raise JobStateError(f"job {row.id} was declared in Python with in-process functions, which did not survive a daemon restart; submit it again")
        return s.spec_from_dict(row.spec, row.source or None, f"job {row.id}")

    async def _run_job(self, live: LiveJob, row: JobRow) -> None:
        job_id, plan = live.id, live.plan
        self.results_dir.mkdir(parents=True, exist_ok=True)

        def on_item_error(stage: str, key: str, message: str) -> None:
            text = f"stage {stage!r} skipped item {key}: {message}"
            self._log_soon(job_id, "warning", text)

        priority = Priority.parse(plan.priority)
        ctx = RunContext(
            job_id=str(job_id), models=PlaneModels(self.plane, priority, job_id), collections=self.collections,
            base_dir=row.base_dir, results_path=str(self.results_dir / f"{job_id}.jsonl"), progress=live.progress,
            on_item_error=on_item_error, channel_capacity=self.config.channel_capacity, allowed_roots=self.allowed_roots(live.owner),
        )
        state, error, started = "failed", "", time.monotonic()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_loop, live)
                with live.scope:
                    if self.config.backend == "ray" and self.ray_runner is not None:
                        await self._log(job_id, "info", f"running on Ray ({self.ray_runner.describe()})")
                        ctx.result_location = await self.ray_runner.run(plan, ctx)
                    else:
                        await run_local(plan, ctx)
                    state = "succeeded"
                nursery.cancel_scope.cancel()
            if state != "succeeded":
                state = "cancelled" if live.cancel_requested else "interrupted"
                error = "cancelled by request" if live.cancel_requested else "the daemon stopped while the job was running"
        except BaseException as exc:  # noqa: BLE001 - every ending is recorded, then re-raised if it is ours to raise
            cause = first_cause(exc)
            if isinstance(cause, trio.Cancelled):
                state = "cancelled" if live.cancel_requested else "interrupted"
                error = "cancelled by request" if live.cancel_requested else "the daemon stopped while the job was running"
                with trio.CancelScope(shield=True):
                    await self._finish(live, state, error, ctx.result_location)
                raise
            error = str(cause) if isinstance(cause, (ItemError, ControlPlaneError, OSError, ValueError)) else f"{type(cause).__name__}: {cause}"
            if not isinstance(cause, (ItemError, ControlPlaneError)):
                logger.warning("job %s failed", job_id, exc_info=cause)
        with trio.CancelScope(shield=True):
            await self._finish(live, state, error, ctx.result_location, time.monotonic() - started)

    async def _finish(self, live: LiveJob, state: str, error: str, result_location: str, elapsed: float | None = None) -> None:
        if live.done.is_set():
            return
        await self._flush(live)
        message = f"in {elapsed:.1f} s" if elapsed is not None and state == "succeeded" else ""
        await self._store(self.store.set_state, live.id, state, error, result_location, message)
        log(logger, logging.INFO if state == "succeeded" else logging.WARNING, "job ended", job=live.id, state=state, uid=live.owner.uid, error=error or "-")
        self.live.pop(live.id, None)
        live.done.set()
        self._notify()
        self._wake.set()

    async def _flush(self, live: LiveJob) -> None:
        counters = [(n, sp.items_in, sp.items_out, sp.errors, sp.done) for n, sp in enumerate(live.progress)]
        await self._store(self.store.update_progress, live.id, counters)

    async def _flush_loop(self, live: LiveJob) -> None:
        while True:
            await trio.sleep(FLUSH_INTERVAL_S)
            await self._flush(live)
            self._notify()

    async def _log(self, job_id: int, level: str, message: str) -> None:
        await self._store(self.store.log, job_id, level, message)
        self._notify()

    def _log_soon(self, job_id: int, level: str, message: str) -> None:
        """Log from a worker thread or a sync callback without blocking the caller."""
        try:
            trio.lowlevel.current_task()
            assert self._nursery is not None
            self._nursery.start_soon(self._log, job_id, level, message)
        except RuntimeError:  # on a worker thread
            trio.from_thread.run_sync(lambda: self._nursery.start_soon(self._log, job_id, level, message))  # type: ignore[union-attr]

    # ------------------------------------------------------------------ the API the doors call

    async def submit(self, spec: s.PipelineSpec, source: str = "", base_dir: str = "", owner: Principal | None = None) -> p.JobSummary:
        """Validate and plan now (errors come back to the caller before anything is stored), then
        queue. `owner`: the RPC peer submitting it (None: the daemon itself, an admin). A user
        peer's job is checked against [jobs].allowed_roots and allowed_function_modules before
        any module it names is imported: PermissionDeniedError saying which setting."""
        owner = owner or daemon_principal()
        base = os.path.normpath(spec.base_dir if os.path.isabs(spec.base_dir) else os.path.join(base_dir or os.getcwd(), spec.base_dir))
        access = job_access(spec, base)
        refusal = submit_refusal(access, owner, self.config.allowed_roots, self.config.allowed_function_modules)
        if refusal is not None:
            raise PermissionDeniedError(refusal)
        plan = await self.plan(spec, owner)
        python_objects = s.has_python_objects(spec)
        job_id = await self._store(
            self.store.create, spec.name, s.spec_to_builtins(spec), source, base, python_objects, self.config.backend, owner.uid, owner.role,
        )
        if python_objects:
            self.python_specs[job_id] = spec
        # What the job touches, with who asked: in the daemon's log and the job's own events.
        log(logger, logging.INFO, "job submitted", job=job_id, name=spec.name, uid=owner.uid, role=owner.role, **access.fields())
        await self._store(self.store.log, job_id, "info", f"access: {owner} {access.describe()}")
        for note in plan.notes:
            await self._store(self.store.log, job_id, "info", f"plan: {note}")
        self._wake.set()
        self._notify()
        return await self.summary(job_id)

    async def submit_toml(self, text: str, source_path: str = "", name: str = "", owner: Principal | None = None) -> p.JobSummary:
        spec = s.load_toml(text, os.path.basename(source_path) or "pipeline.toml")
        if name:
            spec = msgspec.structs.replace(spec, name=name)
        return await self.submit(spec, text, os.path.dirname(source_path) if source_path else "", owner)

    async def summary(self, job_id: int) -> p.JobSummary:
        row = await self._row(job_id)
        return _summary(row)

    async def _row(self, job_id: int) -> JobRow:
        row: JobRow | None = await self._store(self.store.get, job_id)
        if row is None:
            raise JobNotFoundError(f"no job {job_id}")
        return row

    async def check_owner(self, job_id: int, who: Principal) -> None:
        """A user peer sees and acts on its own jobs only (another's may read files it may not,
        and its results with them); admins on every job. NotFound before PermissionDenied, as
        ids are no secret."""
        row = await self._row(job_id)
        if not who.admin and row.owner_uid != who.uid:
            owner = "the daemon" if row.owner_uid is None else f"uid {row.owner_uid}"
            raise PermissionDeniedError(f"job {job_id} belongs to {owner}; {who} sees and acts on its own jobs only: ask an admin (the daemon's user or root)")

    async def list(self, state: str = "", limit: int = 50, who: Principal | None = None) -> list[p.JobSummary]:
        """Newest first. A user peer (`who`) sees its own jobs only."""
        if state and state not in p.JOB_STATES:
            raise InvalidRequestError(f"unknown state {state!r}: use one of {', '.join(p.JOB_STATES)}", param="state")
        owner_uid = None if who is None or who.admin else who.uid
        return [_summary(r) for r in await self._store(self.store.list, state, limit, owner_uid)]

    async def show(self, job_id: int, results: int = 0, events: int = 20) -> p.JobDetail:
        row = await self._row(job_id)
        live = self.live.get(job_id)
        if live is not None:
            stages = [_stage(_stage_row(n, sp)) for n, sp in enumerate(live.progress)]
            notes = list(live.plan.notes)
        else:
            stages = [_stage(r) for r in await self._store(self.store.stages, job_id)]
            notes = []
        all_events = await self._store(self.store.events, job_id, 0, 100000)
        return p.JobDetail(
            job=_summary(row), stages=stages, events=[p.JobEvent(e.seq, e.ts, e.level, e.message) for e in all_events[-events:]],
            results=await trio.to_thread.run_sync(self._results, row, results) if results else [], notes=notes,
        )

    def _results(self, row: JobRow, limit: int) -> builtins.list[Any]:
        path = row.result_location
        if not path or path.startswith("collection:") or not os.path.exists(path):
            return []
        out = []
        with open(path, encoding="utf-8") as f:
            for line in itertools.islice(f, limit):
                out.append(json.loads(line))
        return out

    async def cancel(self, job_id: int) -> p.JobSummary:
        row = await self._row(job_id)
        if row.state == "queued":
            await self._store(self.store.set_state, job_id, "cancelled", "cancelled before it started")
            self._notify()
        elif row.state == "running" and job_id in self.live:
            live = self.live[job_id]
            live.cancel_requested = True
            live.scope.cancel()
            with trio.move_on_after(5):
                await live.done.wait()
        elif row.state in TERMINAL:
            raise JobStateError(f"job {job_id} already ended ({row.state})")
        return await self.summary(job_id)

    async def retry(self, job_id: int) -> p.JobSummary:
        """Run an ended job again (same id, attempt + 1). Collection writes upsert by item id."""
        row = await self._row(job_id)
        if row.state in ("queued", "running"):
            raise JobStateError(f"job {job_id} is {row.state}; retry it once it has ended")
        if row.python_objects and job_id not in self.python_specs:
            raise JobStateError(f"job {job_id} was declared in Python with in-process functions, which did not survive a daemon restart; submit it again")
        await self._store(self.store.set_state, job_id, "queued", "", None, f"retry (attempt {row.attempt + 1})")
        self._wake.set()
        self._notify()
        return await self.summary(job_id)

    async def wait(self, job_id: int, timeout_s: float | None = None, results: int = 0) -> p.JobDetail:
        with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")):
            while (await self._row(job_id)).state not in TERMINAL:
                await self._changed_or(1.0)
        return await self.show(job_id, results)

    async def watch(self, job_id: int, interval_s: float = 0.5, results: int = 0) -> AsyncIterator[p.JobDetail]:
        """A snapshot now, then one per interval, ending with the job (or the daemon's drain)."""
        while True:
            detail = await self.show(job_id, 0)
            if detail.job.state in TERMINAL or self.stopping():
                yield await self.show(job_id, results)
                return
            yield detail
            await trio.sleep(interval_s)

    async def logs(self, job_id: int, follow: bool = False, after: int = 0) -> AsyncIterator[p.JobEvent]:
        await self._row(job_id)
        while True:
            events = await self._store(self.store.events, job_id, after, 1000)
            for event in events:
                after = event.seq
                yield p.JobEvent(event.seq, event.ts, event.level, event.message)
            if events:
                continue
            if not follow or (await self._row(job_id)).state in TERMINAL and not events or self.stopping():
                return
            await self._changed_or(1.0)

    # ------------------------------------------------------------------ model calls of remote stages

    async def embed_for_stage(self, model: str, texts: builtins.list[str], priority: str = "background") -> builtins.list[builtins.list[float]]:
        return await PlaneModels(self.plane, Priority.parse(priority), 0).embed(model, texts)

    async def rerank_for_stage(self, model: str, query: str, documents: builtins.list[str], priority: str = "background") -> builtins.list[float]:
        return await PlaneModels(self.plane, Priority.parse(priority), 0).rerank(model, query, documents)

    async def generate_for_stage(self, params: p.JobGenerateParams) -> tuple[str, str]:
        from sage_daemon.engines.base import ChatMessage, SamplingParams

        if (params.prompt is None) == (params.messages is None):
            raise InvalidRequestError("give exactly one of prompt or messages", param="prompt")
        sampling = SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature, seed=params.seed)
        messages = tuple(ChatMessage(m.get("role", "user"), m.get("content", "")) for m in params.messages) if params.messages is not None else None
        request = GenerationRequest(request_id="", sampling=sampling, prompt=params.prompt, messages=messages)
        meta = RequestMeta(request_id="", priority=Priority.parse(params.priority), caller="job")
        stream = await self.plane.generate(params.model, "chat" if messages is not None else "completion", request, meta)
        text, final = await stream.collect()
        return text, final.finish_reason or ""

    # ------------------------------------------------------------------ collections

    async def collection_list(self) -> builtins.list[p.CollectionRow]:
        return [_collection(c) for c in await trio.to_thread.run_sync(self.collections.list)]

    async def collection_show(self, name: str) -> p.CollectionRow:
        return _collection(await trio.to_thread.run_sync(lambda: self.collections.get(name).info()))

    async def collection_drop(self, name: str) -> p.CollectionRow:
        writers = [j for j in self.live.values() if name in j.plan.collections_written]
        if writers:
            raise JobStateError(f"collection {name!r} is being written by job {writers[0].id}; cancel it first")
        return _collection(await trio.to_thread.run_sync(self.collections.drop, name))

    def close(self) -> None:
        """Close the job store (when `run` ends: the daemon has stopped both doors by then)."""
        self.store.close()


def _summary(row: JobRow) -> p.JobSummary:
    return p.JobSummary(row.id, row.name, row.state, row.created_at, row.started_at, row.finished_at, row.attempt, row.error, row.result_location, row.executor)


def _stage_row(index: int, sp: StageProgress) -> StageRow:
    return StageRow(index, sp.name, sp.ops, sp.kind, sp.parallelism, sp.node, sp.reason, sp.items_in, sp.items_out, sp.errors, sp.done)


def _stage(row: StageRow) -> p.JobStage:
    return msgspec.convert(msgspec.to_builtins(row), p.JobStage)


def _collection(info: Any) -> p.CollectionRow:
    return msgspec.convert(msgspec.to_builtins(info), p.CollectionRow)
