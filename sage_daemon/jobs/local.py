"""The local executor: a plan run as trio tasks in the daemon, CPU work on worker threads.

Every physical stage gets `parallelism` worker tasks. Stages are joined by bounded memory
channels of packets (lists of items), so a slow stage fills its input channel and the stages
before it wait on `send`: back-pressure reaches the source, and memory stays bounded by
(channel capacity × packet size) per stage. Model stages re-batch their input to `batch_size`
at the boundary and call the control plane (in-process, at the job's priority). CPU work —
reading files, user functions, chunking, collection writes, sinks — runs on threads, never on
the trio thread; cancelling the job abandons those threads' results and stops at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from sage_daemon.jobs import operators as ops
from sage_daemon.jobs import spec as s
from sage_daemon.jobs.planner import PhysicalStage, Plan
from sage_daemon.jobs.vectorstore import CollectionStore

REBATCH_WAIT_S = 0.02  # a model stage waits this long for a fuller batch when its input runs dry


@dataclass
class StageProgress:
    name: str
    ops: str
    kind: str
    parallelism: int
    node: str = ""
    reason: str = ""
    items_in: int = 0
    items_out: int = 0
    errors: int = 0
    done: bool = False


@dataclass
class RunContext:
    job_id: str
    models: ops.ModelClient
    collections: CollectionStore
    base_dir: str
    results_path: str  # where a `collect` sink writes
    progress: list[StageProgress]
    on_item_error: Callable[[str, str, str], None] = lambda stage, key, message: None
    channel_capacity: int = 8
    result_location: str = ""
    # Where the job may read and write files (a user peer's job: [jobs].allowed_roots); None:
    # anywhere (an admin's job). Checked on each real path as it is opened.
    allowed_roots: tuple[str, ...] | None = None


def progress_for(plan: Plan) -> list[StageProgress]:
    return [
        StageProgress(st.name, st.ops_label, st.kind, st.parallelism, st.placement.node if st.placement else "", st.placement.reason if st.placement else "")
        for st in plan.stages
    ]


def attempts_of(on_error: str) -> int:
    return int(on_error.split(":", 1)[1]) + 1 if on_error.startswith("retry:") else 1


def first_cause(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = next((e for e in exc.exceptions if not isinstance(e, trio.Cancelled)), exc.exceptions[0])
    return exc


class CpuWorker:
    """One worker's fused chain of item-wise operators, with the stage's error policy per item."""

    def __init__(self, stage: PhysicalStage, ctx: RunContext):
        self.stage = stage
        self.ctx = ctx
        self.batch = ops.BatchOp(stage.ops[0].size) if isinstance(stage.ops[0], s.Batch) else None
        self.chain = [] if self.batch else [ops.item_op(op, stage.functions[n]() if n in stage.functions else None) for n, op in enumerate(stage.ops)]

    def _one(self, item: Any, first: list[Any] | Exception | None = None) -> list[Any]:
        """The chain over one item; `first`: what the chain's first operator already made of it."""
        if first is None:
            items, chain = [item], self.chain
        elif isinstance(first, Exception):
            raise first
        else:
            items, chain = first, self.chain[1:]
        for op in chain:
            items = [out for it in items for out in op(it)]
        return items

    def process(self, packet: list[Any]) -> tuple[list[Any], int]:
        """(outputs, errors skipped). Raises ItemError when the policy says fail."""
        if self.batch is not None:
            return [out for item in packet for out in self.batch.push(item)], 0
        out: list[Any] = []
        skipped = 0
        tries = attempts_of(self.stage.on_error)
        # A chunk first in the chain splits the whole packet in one call (its splitter thread
        # works through every document); a retry of an item goes the item-wise way.
        firsts = self.chain[0].many(packet) if self.chain and isinstance(self.chain[0], ops.ChunkOp) and len(packet) > 1 else None
        for position, item in enumerate(packet):
            for attempt in range(tries):
                try:
                    out.extend(self._one(item, firsts[position] if firsts is not None and attempt == 0 else None))
                    break
                except Exception as exc:
                    if attempt + 1 < tries:
                        continue
                    error = ops.ItemError(self.stage.name, ops.item_key(item), exc)
                    if self.stage.on_error == "skip":
                        skipped += 1
                        self.ctx.on_item_error(self.stage.name, error.key, error.detail)
                    else:
                        raise error from None
        return out, skipped

    def flush(self) -> list[Any]:
        return self.batch.flush() if self.batch is not None else []


class Rebatcher:
    """Regroups incoming packets into batches of `size` items at a model stage's boundary."""

    def __init__(self, receive: trio.MemoryReceiveChannel[list[Any]], size: int):
        self.receive = receive
        self.size = max(1, size)
        self.buffer: list[Any] = []
        self.ended = False

    async def next(self) -> list[Any] | None:
        while len(self.buffer) < self.size and not self.ended:
            try:
                if self.buffer:
                    packet = None
                    with trio.move_on_after(REBATCH_WAIT_S):
                        packet = await self.receive.receive()
                    if packet is None:
                        break  # input ran dry: run what we have rather than idle the engine
                else:
                    packet = await self.receive.receive()
            except trio.EndOfChannel:
                self.ended = True
                break
            self.buffer.extend(packet)
        if not self.buffer:
            return None
        batch, self.buffer = self.buffer[: self.size], self.buffer[self.size :]
        return batch


async def run_local(plan: Plan, ctx: RunContext) -> str:
    """Run the plan to the end (or until cancelled). Returns where the results are."""
    collections = ctx.collections

    async def to_thread(fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    # Channels: one into each stage after the source, or one per worker after a key_by.
    inputs: list[list[tuple[trio.MemorySendChannel[list[Any]], trio.MemoryReceiveChannel[list[Any]]]]] = []
    for st in plan.stages[1:]:
        lanes = st.parallelism if (st.partition is not None and st.parallelism > 1) else 1
        inputs.append([trio.open_memory_channel[list[Any]](ctx.channel_capacity) for _ in range(lanes)])

    def router(index: int) -> Callable[[list[Any]], list[tuple[int, list[Any]]]]:
        """How stage `index` splits a packet among the lanes of the next stage."""
        if index + 1 >= len(plan.stages):
            return lambda packet: []
        nxt = plan.stages[index + 1]
        lanes = len(inputs[index])
        if lanes == 1:
            return lambda packet: [(0, packet)]
        key_fn = nxt.partition_fn() if nxt.partition_fn else None
        key_field = nxt.partition.field if nxt.partition else None

        def split(packet: list[Any]) -> list[tuple[int, list[Any]]]:
            parts: dict[int, list[Any]] = {}
            for item in packet:
                key = key_fn(item) if key_fn else (item.get(key_field) if isinstance(item, dict) else item)
                parts.setdefault(_stable_hash(key) % lanes, []).append(item)
            return list(parts.items())

        return split

    async def emit(index: int, sends: list[trio.MemorySendChannel[list[Any]]], packet: list[Any], split: Callable[[list[Any]], list[tuple[int, list[Any]]]]) -> None:
        if not packet:
            return
        ctx.progress[index].items_out += len(packet)
        for lane, part in split(packet):
            await sends[lane].send(part)

    async def source(sends: list[trio.MemorySendChannel[list[Any]]]) -> None:
        split = router(0)
        next_packet = ops.packets(ops.source_items(plan.stages[0].ops[0], ctx.base_dir, ctx.allowed_roots))
        try:
            while packet := await to_thread(next_packet):
                ctx.progress[0].items_in += len(packet)
                await emit(0, sends, packet, split)
        except (OSError, ValueError) as exc:
            raise ops.ItemError(plan.stages[0].name, "(source)", exc) from None
        finally:
            for send in sends:
                await send.aclose()
        ctx.progress[0].done = True

    async def cpu_worker(index: int, receive: trio.MemoryReceiveChannel[list[Any]], sends: list[trio.MemorySendChannel[list[Any]]]) -> None:
        stage, progress, split = plan.stages[index], ctx.progress[index], router(index)
        worker = await to_thread(CpuWorker, stage, ctx)
        async with receive:
            async for packet in receive:
                progress.items_in += len(packet)
                out, skipped = await to_thread(worker.process, packet)
                progress.errors += skipped
                await emit(index, sends, out, split)
        await emit(index, sends, worker.flush(), split)

    async def model_worker(index: int, receive: trio.MemoryReceiveChannel[list[Any]], sends: list[trio.MemorySendChannel[list[Any]]], worker_no: int) -> None:
        stage, progress, split = plan.stages[index], ctx.progress[index], router(index)
        rebatch = Rebatcher(receive, stage.batch_size)
        calls = 0
        async with receive:
            while (batch := await rebatch.next()) is not None:
                progress.items_in += len(batch)
                calls += 1
                out = await _with_policy(stage, batch, ctx, lambda b: ops.model_apply(stage, b, ctx.models, collections, to_thread, f"{ctx.job_id}-{stage.name}-{worker_no}-{calls}"))
                await emit(index, sends, out, split)

    async def write_worker(index: int, receive: trio.MemoryReceiveChannel[list[Any]], sends: list[trio.MemorySendChannel[list[Any]]]) -> None:
        stage, progress, split = plan.stages[index], ctx.progress[index], router(index)
        op = stage.ops[0]
        rebatch = Rebatcher(receive, stage.batch_size)
        model = ops.model_of_vectors(index, plan.stages)
        writer: ops.JsonlWriter | None = None
        if isinstance(op, s.ToJsonl):
            writer = await to_thread(ops.JsonlWriter, ops.sink_path(ctx.base_dir, op.path, ctx.allowed_roots), op.exclude)
            ctx.result_location = writer.path
        elif isinstance(op, s.Collect):
            writer = await to_thread(ops.JsonlWriter, ctx.results_path, op.exclude, op.limit)
            ctx.result_location = writer.path
        elif isinstance(op, s.Index) and stage.kind == "sink":
            ctx.result_location = f"collection:{op.collection}"
        try:
            async with receive:
                while (batch := await rebatch.next()) is not None:
                    progress.items_in += len(batch)
                    if isinstance(op, s.Index):
                        await _with_policy(stage, batch, ctx, lambda b: to_thread(ops.write_collection, op, b, collections, model))
                    else:
                        await to_thread(writer.write, batch)  # type: ignore[union-attr]
                    if stage.kind == "write":
                        await emit(index, sends, batch, split)
                    else:
                        progress.items_out += len(batch)
        finally:
            if writer is not None:
                with trio.CancelScope(shield=True):
                    await to_thread(writer.close)

    async def run_stage(index: int, nursery: trio.Nursery) -> None:
        stage = plan.stages[index]
        sends = [send for send, _ in inputs[index]] if index < len(inputs) else []
        lanes = inputs[index - 1]
        async with trio.open_nursery() as workers:
            for worker_no in range(stage.parallelism):
                receive = lanes[worker_no % len(lanes)][1].clone()
                mine = [send.clone() for send in sends]
                if stage.kind == "model":
                    workers.start_soon(_closing, mine, model_worker(index, receive, mine, worker_no))
                elif stage.kind in ("write", "sink"):
                    workers.start_soon(_closing, mine, write_worker(index, receive, mine))
                else:
                    workers.start_soon(_closing, mine, cpu_worker(index, receive, mine))
            for _, receive in lanes:
                await receive.aclose()  # the workers hold clones
            for send in sends:
                await send.aclose()
        ctx.progress[index].done = True

    async with trio.open_nursery() as nursery:
        for index in range(1, len(plan.stages)):
            nursery.start_soon(run_stage, index, nursery)
        nursery.start_soon(source, [send for send, _ in inputs[0]])
    return ctx.result_location


async def _closing(sends: list[trio.MemorySendChannel[list[Any]]], work: Any) -> None:
    try:
        await work
    finally:
        for send in sends:
            await send.aclose()


async def _with_policy(stage: PhysicalStage, batch: list[Any], ctx: RunContext, call: Callable[[list[Any]], Any]) -> list[Any]:
    """Run a batch call under the stage's on_error: retry the batch, then (skip) item by item."""
    tries = attempts_of(stage.on_error)
    last: BaseException | None = None
    for attempt in range(tries):
        try:
            result = await call(batch)
            return result if isinstance(result, list) else batch
        except ops.ItemError:
            raise
        except Exception as exc:
            last = exc
            if attempt + 1 < tries:
                await trio.sleep(min(2.0, 0.1 * math.pow(2, attempt)))
    assert last is not None
    if stage.on_error != "skip":
        raise ops.ItemError(stage.name, ops.item_key(batch[0]) + (f" (in a batch of {len(batch)})" if len(batch) > 1 else ""), last) from None
    if len(batch) == 1:
        ctx.progress[stage.index].errors += 1
        ctx.on_item_error(stage.name, ops.item_key(batch[0]), f"{type(last).__name__}: {last}")
        return []
    out: list[Any] = []
    for item in batch:  # find the bad items; keep the good ones
        out.extend(await _with_policy(stage, [item], ctx, call))
    return out


def _stable_hash(key: Any) -> int:
    """A hash that is the same in every process (Python's str hash is salted per process)."""
    import zlib

    return zlib.crc32(repr(key).encode())
