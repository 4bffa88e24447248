"""The control plane: every request from every door goes through here.

A request is validated against its model, enqueued with a bound (a full queue is a 429 with a
Retry-After from the measured drain rate), admitted by the active policy (a plain steppable
object, see policies.py) and run on the pool's engine. LLM requests are admitted into free
sequence slots of their engine (the engine batches live sequences itself); embedding requests
are grouped into batches here. A cancelled request leaves its queue or frees its slot at once.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import msgspec
import trio

from sage_daemon.control.api import (
    ControlPlaneError,
    DeadlineExceededError,
    EngineUnavailableError,
    HealthReport,
    InvalidRequestError,
    ModelInfo,
    QueueEntry,
    QueueFullError,
    QueueSnapshot,
    RequestKind,
    RequestMeta,
    ShuttingDownError,
    Tokenized,
)
from sage_daemon.control.gate import CpuGate
from sage_daemon.control.policies import POLICIES, Admit, BatchLimits, Expire, PolicySettings, QueueState, RunBatch, Ticket
from sage_daemon.core.config import ControlConfig, ModelConfig
from sage_daemon.core.errors import UpstreamError
from sage_daemon.core.logging import log
from sage_daemon.engines.base import (
    EmbeddingEngine,
    EmbeddingResult,
    EngineError,
    GenerationChunk,
    GenerationRequest,
    LLMEngine,
    RerankEngine,
    RerankResult,
    TokenCodec,
)
from sage_daemon.engines.pool import EnginePool

logger = logging.getLogger("sage.control")

EMBEDDING_PIPELINE_DEPTH = 2  # embedding batches an engine may hold at once (one running, one next)


class PlaneMetrics(Protocol):
    """The hooks the plane calls at each hop (implemented by core.metrics.Metrics)."""

    def on_queued(self, model: str, kind: str) -> None: ...
    def on_dequeued(self, model: str, kind: str) -> None: ...
    def on_admitted(self, model: str, kind: str, queue_time_s: float) -> None: ...
    def on_first_token(self, model: str, ttft_s: float) -> None: ...
    def on_token(self, model: str, itl_s: float, n: int = 1) -> None: ...
    def on_finished(self, model: str, kind: str, finish_reason: str, prompt_tokens: int, completion_tokens: int, e2e_s: float) -> None: ...
    def on_embedding_batch(self, model: str, texts: int) -> None: ...


class NullMetrics:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def settings_from(config: ControlConfig) -> PolicySettings:
    return PolicySettings(
        batch=BatchLimits(config.max_batch_texts, config.max_batch_tokens, config.max_batch_wait_ms / 1000),
        reserved_interactive_slots=config.reserved_interactive_slots,
        aging_s=config.aging_s,
    )


@dataclass(frozen=True)
class EmbeddingWork:
    inputs: list[Any]  # texts, or token-id lists
    as_tokens: bool
    dimensions: int | None


@dataclass(frozen=True)
class RerankWork:
    query: str
    documents: list[str]


def cosine_scores(vectors: list[list[float]]) -> list[float]:
    """Cosine similarity of vectors[1:] to vectors[0]: an embedding model used as a reranker."""
    import numpy as np

    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1)
    norms[norms == 0] = 1.0
    scores: list[float] = ((matrix[1:] @ matrix[0]) / (norms[1:] * norms[0])).tolist()
    return scores


def apportion(total: int, weights: list[int]) -> list[int]:
    """Split a total (a remote's usage count) over inputs by their lengths."""
    weight_sum = sum(weights) or 1
    shares = [total * w // weight_sum for w in weights]
    if shares:
        shares[-1] += total - sum(shares)
    return shares


@dataclass(eq=False)
class PlaneTicket(Ticket):
    done: trio.Event = field(default_factory=trio.Event)


class DrainRate:
    """Completions per second over the last few completions, for Retry-After and wait estimates."""

    def __init__(self, window: int = 64):
        self.times: deque[float] = deque(maxlen=window)

    def record(self, now: float) -> None:
        self.times.append(now)

    def per_second(self, now: float) -> float | None:
        if len(self.times) < 2:
            return None
        span = max(now - self.times[0], 1e-3)
        return len(self.times) / span


class ControlPlane:
    def __init__(self, pool: EnginePool, config: ControlConfig, metrics: PlaneMetrics | None = None, gate: CpuGate | None = None):
        self.pool = pool
        self.config = config
        self.metrics: PlaneMetrics = metrics or NullMetrics()
        self.gate = gate or CpuGate()
        self.settings = settings_from(config)
        self.policy = POLICIES[config.policy](self.settings)
        self.gate.embedding_first = config.policy == "hybrid"
        self.waiting: list[PlaneTicket] = []
        self.running: dict[str, int] = {}  # LLM model -> admitted sequences
        # Embedding batches handed to an engine and not finished, per model. Two keep the engine's
        # worker fed: the next batch is queued at the engine while the current one runs, so no
        # time is lost between batches waiting for the dispatcher.
        self.embedding_in_flight: dict[str, int] = {}
        self.drain_rates: dict[str, DrainRate] = {}
        self.accepting = True
        self._wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._ids = 0

    def _interactive_waiting(self, delta: int) -> None:
        """Admitted interactive generations still waiting for a first token (the gate counts them)."""
        self.gate.set_interactive_pending(self.gate.interactive_pending + delta)

    # ------------------------------------------------------------------ lifetime

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The pool's supervision (loads, keep-alive, restarts) and the dispatcher, until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.pool.run)
            await nursery.start(self.run)
            task_status.started()

    async def aclose(self) -> None:
        """Unload every engine (after the drain)."""
        await self.pool.aclose()

    # ------------------------------------------------------------------ dispatcher

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self._wakeup = trio.Event()
                result = self.policy.step(self._state())
                for decision in result.decisions:
                    self._apply(decision)
                if result.decisions:
                    await trio.sleep(0)  # let admitted requests start before stepping again
                    continue
                wait = math.inf if result.wake_at is None else max(0.0, result.wake_at - trio.current_time())
                with trio.move_on_after(wait):
                    await self._wakeup.wait()

    def _poke(self) -> None:
        self._wakeup.set()

    def _state(self) -> QueueState:
        free: dict[str, int] = {}
        idle: dict[str, bool] = {}
        running: dict[str, int] = {}
        for model in {t.model for t in self.waiting}:
            slot = self.pool.slot(model)
            if slot.config.kind == "llm":
                engine = cast("LLMEngine | None", slot.engine)
                parallel = engine.parallel if engine is not None else slot.config.parallel
                free[model] = max(0, parallel - self.running.get(model, 0))
            else:
                running[model] = self.embedding_in_flight.get(model, 0)
                idle[model] = running[model] < EMBEDDING_PIPELINE_DEPTH
        return QueueState(trio.current_time(), list(self.waiting), free, idle, running)

    def _apply(self, decision: Admit | RunBatch | Expire) -> None:
        if isinstance(decision, Admit):
            ticket = decision.ticket
            self._leave_queue(ticket)
            self.running[ticket.model] = self.running.get(ticket.model, 0) + 1
            ticket.outcome = "admitted"
            cast(PlaneTicket, ticket).done.set()
        elif isinstance(decision, Expire):
            ticket = decision.ticket
            self._leave_queue(ticket)
            waited = trio.current_time() - ticket.enqueued_at
            deadline_ms = (ticket.meta.deadline_s or 0.0) * 1000
            ticket.outcome = DeadlineExceededError(
                f"request {ticket.id} waited {waited * 1000:.0f} ms in the {ticket.model} queue, past its deadline of {deadline_ms:.0f} ms"
            )
            cast(PlaneTicket, ticket).done.set()
        else:
            for ticket in decision.tickets:
                self._leave_queue(ticket)
            self.embedding_in_flight[decision.model] = self.embedding_in_flight.get(decision.model, 0) + 1
            assert self._nursery is not None
            self._nursery.start_soon(self._run_batch, decision.model, decision.tickets)

    def _leave_queue(self, ticket: Ticket) -> None:
        if ticket in self.waiting:
            self.waiting.remove(ticket)
            self.metrics.on_dequeued(ticket.model, ticket.kind)

    # ------------------------------------------------------------------ queueing

    def _enqueue(self, model: str, kind: RequestKind, meta: RequestMeta, size: int, tokens: int, payload: Any) -> PlaneTicket:
        if not self.accepting:
            raise ShuttingDownError("the daemon is shutting down; retry once it is back")
        queued = sum(1 for t in self.waiting if t.model == model)
        if queued >= self.config.max_queue:
            retry = self.retry_after_s(model, queued)
            raise QueueFullError(
                f"the queue of model {model!r} is full ({queued} waiting, max_queue {self.config.max_queue}); retry in {retry:.0f} s",
                retry_after_s=retry,
            )
        self._ids += 1
        ticket = PlaneTicket(id=meta.request_id or f"req-{self._ids}", model=model, kind=kind, meta=meta, enqueued_at=trio.current_time(), size=size, tokens=tokens, payload=payload)
        self.waiting.append(ticket)
        self.metrics.on_queued(model, kind)
        self._poke()
        return ticket

    def retry_after_s(self, model: str, queued: int) -> float:
        rate = self.drain_rates.get(model, DrainRate()).per_second(trio.current_time())
        if not rate:
            return 1.0
        return float(min(60, max(1, math.ceil(queued / rate))))

    async def _wait_turn(self, ticket: PlaneTicket) -> None:
        """Wait until admitted (or a batch finished); leaving early takes the ticket out of the queue."""
        try:
            await ticket.done.wait()
        except BaseException:
            if ticket in self.waiting:
                self._leave_queue(ticket)
                self._poke()
            raise
        if isinstance(ticket.outcome, BaseException):
            raise ticket.outcome

    def _finished(self, model: str) -> None:
        self.drain_rates.setdefault(model, DrainRate()).record(trio.current_time())
        self._poke()

    def _generation_done(self, model: str) -> None:
        """An admitted generation ended (its stream closed): its slot is free for the policy."""
        self.running[model] -= 1
        self._finished(model)

    def _generation_withdrawn(self, ticket: PlaneTicket) -> None:
        """A generation left before admission (its caller closed the stream while it waited)."""
        if ticket in self.waiting:
            self._leave_queue(ticket)
            self._poke()

    # ------------------------------------------------------------------ requests

    def _require_kind(self, model: str, kind: str) -> None:
        actual = self.pool.slot(model).config.kind
        if actual != kind:
            use = {"llm": "/v1/chat/completions or /v1/completions", "embedding": "/v1/embeddings", "rerank": "/v1/rerank"}[actual]
            wanted = {"llm": "a language model", "embedding": "an embedding model", "rerank": "a reranker"}[kind]
            raise InvalidRequestError(f"model {model!r} is not {wanted} (it is a {actual} model: use {use})", param="model")

    async def generate(self, model: str, kind: RequestKind, request: GenerationRequest, meta: RequestMeta) -> GenerationStream:
        """Validate, enqueue and hand back the stream; iterate it to wait for admission and get chunks."""
        self._require_kind(model, "llm")
        if not self.accepting:
            raise ShuttingDownError("the daemon is shutting down; retry once it is back")
        stack = AsyncExitStack()
        try:
            engine = cast(LLMEngine, await stack.enter_async_context(self.pool.use(model, meta.keep_alive_s)))
            try:
                # Tokenizing and rendering the chat template are blocking work: off the trio thread.
                prepared = await trio.to_thread.run_sync(engine.prepare, request)
            except InvalidRequestError as exc:  # context overflow, no chat template, sampling values, token ids
                if exc.param is None:
                    exc.param = "messages" if request.messages is not None else "prompt"
                raise
            tokens = len(prepared.prompt_tokens or ())
            if meta.background:
                prepared = msgspec.structs.replace(prepared, background=True)
            ticket = self._enqueue(model, kind, meta, size=1, tokens=tokens, payload=prepared)
        except BaseException:
            with trio.CancelScope(shield=True):
                await stack.aclose()
            raise
        return GenerationStream(self, ticket, engine, stack)

    @asynccontextmanager
    async def _codec(self, model: str, meta: RequestMeta) -> AsyncIterator[tuple[TokenCodec, int]]:
        """The model's tokenizer (loading the model) and its context length in tokens."""
        self.get_model(model)
        async with self.pool.use(model, meta.keep_alive_s) as engine:
            if not engine.local_tokenizer:
                raise InvalidRequestError(
                    f"model {model!r} runs on {engine.backend}: its tokenizer is in that server, not in this daemon; ask the server itself", param="model"
                )
            context = cast(LLMEngine, engine).n_ctx if engine.kind == "llm" else cast(EmbeddingEngine, engine).max_seq_length
            yield cast(TokenCodec, engine), context

    async def tokenize(self, model: str, text: str, add_special: bool, with_pieces: bool, meta: RequestMeta) -> Tokenized:
        async with self._codec(model, meta) as (codec, context):

            def run() -> Tokenized:
                ids = codec.tokenize(text, add_special)
                return Tokenized(ids, codec.token_pieces(ids) if with_pieces else None, context)

            return await trio.to_thread.run_sync(run)

    async def detokenize(self, model: str, token_ids: list[int], meta: RequestMeta) -> str:
        async with self._codec(model, meta) as (codec, _):
            size = codec.vocab_size
            bad = next((t for t in token_ids if not 0 <= t < size), None)
            if bad is not None:  # llama.cpp asserts (ends the process) on an id beyond its vocabulary
                raise InvalidRequestError(f"token id {bad} is not in the vocabulary of {model!r} (ids are 0 to {size - 1})", param="tokens")
            return await trio.to_thread.run_sync(codec.detokenize, token_ids)

    async def count_prompt_tokens(self, model: str, request: GenerationRequest, meta: RequestMeta) -> int:
        self._require_kind(model, "llm")
        async with self.pool.use(model, meta.keep_alive_s) as used:
            prepared = await trio.to_thread.run_sync(cast(LLMEngine, used).prepare, request)
        if prepared.prompt_tokens is None:
            raise InvalidRequestError(f"model {model!r} is served by a remote server: its tokens are not counted here", param="model")
        return len(prepared.prompt_tokens)

    async def embed(self, model: str, inputs: list[str] | list[list[int]], meta: RequestMeta, dimensions: int | None = None) -> EmbeddingResult:
        """Embed texts (or token-id lists), batched with other requests to the same model."""
        self._require_kind(model, "embedding")
        if not inputs:
            raise InvalidRequestError("input must not be empty", param="input")
        as_tokens = isinstance(inputs[0], list)
        async with self.pool.use(model, meta.keep_alive_s) as used:
            engine = cast(EmbeddingEngine, used)
            if as_tokens and not engine.accepts_token_ids:
                raise InvalidRequestError(f"model {model!r} does not take token ids as input; send text", param="input")
            if dimensions is not None and dimensions != engine.dimensions and not engine.supports_dimensions:
                raise InvalidRequestError(f"model {model!r} does not support the dimensions parameter (its vectors have {engine.dimensions})", param="dimensions")
            # Token budget of the batch: exact for ids, a cheap estimate for text.
            tokens = sum(len(i) for i in inputs) if as_tokens else sum(len(t) for t in inputs) // 4 + len(inputs)
            ticket = self._enqueue(model, "embedding", meta, size=len(inputs), tokens=tokens, payload=EmbeddingWork(list(inputs), as_tokens, dimensions))
            await self._wait_turn(ticket)
            result: EmbeddingResult = ticket.outcome
        return result

    async def rerank(self, model: str, query: str, documents: list[str], meta: RequestMeta) -> RerankResult:
        """Score documents against a query: pairs batched with other rerank requests to a
        cross-encoder, or cosine similarity of an embedding model's vectors."""
        if self.pool.slot(model).config.kind == "embedding":
            if not documents:
                raise InvalidRequestError("documents must not be empty", param="documents")
            embedded = await self.embed(model, [query, *documents], meta)
            return RerankResult(cosine_scores(embedded.vectors), embedded.prompt_tokens, embedded.truncated)
        self._require_kind(model, "rerank")
        if not documents:
            raise InvalidRequestError("documents must not be empty", param="documents")
        async with self.pool.use(model, meta.keep_alive_s):
            # Token budget of the batch: a cheap estimate (the query is read once per document).
            tokens = sum(len(query) + len(d) for d in documents) // 4 + 2 * len(documents)
            ticket = self._enqueue(model, "rerank", meta, size=len(documents), tokens=tokens, payload=RerankWork(query, list(documents)))
            await self._wait_turn(ticket)
            result: RerankResult = ticket.outcome
        return result

    async def _run_batch(self, model: str, tickets: tuple[Ticket, ...]) -> None:
        now = trio.current_time()
        kind = tickets[0].kind  # one model, one kind: embedding or rerank
        for ticket in tickets:
            self.metrics.on_admitted(model, kind, now - ticket.enqueued_at)
        self.metrics.on_embedding_batch(model, sum(t.size for t in tickets))
        try:
            if kind == "rerank":
                await self._rerank_group(model, list(tickets))
            else:
                # One engine call per kind of input (text or ids, and requested dimensions).
                groups: dict[tuple[bool, int | None], list[Ticket]] = {}
                for ticket in tickets:
                    work: EmbeddingWork = ticket.payload
                    groups.setdefault((work.as_tokens, work.dimensions), []).append(ticket)
                for (as_tokens, dimensions), group in groups.items():
                    await self._embed_group(model, group, as_tokens, dimensions)
        finally:
            self.embedding_in_flight[model] -= 1
            now = trio.current_time()
            for ticket in tickets:
                # Every admitted ticket ends here, whatever its caller does (gauges stay balanced).
                outcome = ticket.outcome
                if isinstance(outcome, (EmbeddingResult, RerankResult)):
                    self.metrics.on_finished(model, kind, "stop", outcome.prompt_tokens, 0, now - ticket.enqueued_at)
                else:
                    self.metrics.on_finished(model, kind, "error", 0, 0, now - ticket.enqueued_at)
                cast(PlaneTicket, ticket).done.set()
                self._finished(model)

    async def _rerank_group(self, model: str, group: list[Ticket]) -> None:
        engine = cast("RerankEngine | None", self.pool.slot(model).engine)
        try:
            if engine is None:
                raise EngineError(f"model {model} was unloaded")
            works: list[RerankWork] = [t.payload for t in group]
            results = await engine.rerank([(w.query, w.documents) for w in works], background=all(t.meta.background for t in group))
        except (InvalidRequestError, UpstreamError) as exc:
            if len(group) > 1 and exc.status < 500:
                for ticket in group:  # one request's bad input must not fail the others: each goes again alone
                    await self._rerank_group(model, [ticket])
                return
            if isinstance(exc, InvalidRequestError):
                exc = InvalidRequestError(exc.message, param=exc.param or "documents")
            for ticket in group:
                ticket.outcome = exc
            return
        except Exception as exc:
            log(logger, logging.ERROR, "rerank batch failed", model=model, pairs=sum(t.size for t in group), error=str(exc))
            for ticket in group:
                ticket.outcome = EngineUnavailableError(f"model {model!r} failed: {exc}")
            return
        for ticket, result in zip(group, results):
            ticket.outcome = result

    async def _embed_group(self, model: str, group: list[Ticket], as_tokens: bool, dimensions: int | None) -> None:
        inputs = [item for ticket in group for item in ticket.payload.inputs]
        engine = cast("EmbeddingEngine | None", self.pool.slot(model).engine)
        try:
            if engine is None:
                raise EngineError(f"model {model} was unloaded")
            call = engine.embed_tokens if as_tokens else engine.embed
            # A batch of job-stage work only may be held back at the CPU gate for interactive chats.
            background = all(t.meta.background for t in group)
            result = await call(inputs, dimensions, background=background)
        except (InvalidRequestError, UpstreamError) as exc:  # an input refused (by the engine or a remote server)
            if len(group) > 1 and exc.status < 500:
                # One request's bad input must not fail the others batched with it: each goes again alone.
                for ticket in group:
                    await self._embed_group(model, [ticket], as_tokens, dimensions)
                return
            if isinstance(exc, InvalidRequestError):
                exc = InvalidRequestError(exc.message, param=exc.param or "input")
            for ticket in group:
                ticket.outcome = exc
            return
        except Exception as exc:
            log(logger, logging.ERROR, "embedding batch failed", model=model, inputs=len(inputs), error=str(exc))
            for ticket in group:
                ticket.outcome = EngineUnavailableError(f"model {model!r} failed: {exc}")
            return
        counts = result.token_counts or apportion(result.prompt_tokens, [len(i) for i in inputs])
        limit = engine.max_seq_length or 1 << 30
        start = 0
        for ticket in group:
            end = start + ticket.size
            mine = counts[start:end]
            ticket.outcome = EmbeddingResult(
                vectors=result.vectors[start:end],
                prompt_tokens=sum(min(c, limit) for c in mine),
                truncated=sum(1 for c in mine if c > limit),
                dimensions=result.dimensions,
                token_counts=mine,
            )
            start = end

    # ------------------------------------------------------------------ views

    def list_models(self) -> list[ModelInfo]:
        return self.pool.infos()

    async def load(self, name: str) -> ModelInfo:
        return await self.pool.load(name)

    async def put_model(self, model: ModelConfig) -> ModelInfo:
        return await self.pool.put_model(model)

    async def remove_model(self, name: str) -> ModelInfo:
        if any(t.model == name for t in self.waiting) or self.running.get(name):
            raise InvalidRequestError(f"model {name!r} has requests waiting or running; retry when they are done (or unload it first)", param="name")
        return await self.pool.remove_model(name)

    async def unload(self, name: str) -> ModelInfo:
        return await self.pool.unload(name)

    @property
    def policy_name(self) -> str:
        return self.policy.name

    def queue_snapshot(self) -> QueueSnapshot:
        return QueueSnapshot(self.policy.name, self.queue(), {m: n for m, n in self.running.items() if n})

    def get_model(self, name: str) -> ModelInfo:
        return self.pool.info(name)

    def health(self) -> HealthReport:
        reasons = self.pool.health_reasons()
        return HealthReport(ok=not reasons, reasons=reasons, models=self.pool.infos())

    def queue(self) -> list[QueueEntry]:
        now = trio.current_time()
        entries = []
        positions: dict[str, int] = {}
        for ticket in self.waiting:
            position = positions.get(ticket.model, 0)
            positions[ticket.model] = position + 1
            rate = self.drain_rates.get(ticket.model, DrainRate()).per_second(now)
            entries.append(
                QueueEntry(ticket.id, ticket.model, ticket.kind, ticket.meta.priority.name.lower(), position, now - ticket.enqueued_at, (position + 1) / rate if rate else None)
            )
        return entries

    def set_policy(self, name: str) -> str:
        if name not in POLICIES:
            raise InvalidRequestError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}", param="policy")
        previous, self.policy = self.policy.name, POLICIES[name](self.settings)
        self.gate.embedding_first = name == "hybrid"
        log(logger, logging.INFO, "scheduling policy changed", previous=previous, policy=name)
        self._poke()
        return previous

    def pause_for_interactive(self, cancelled: threading.Event) -> None:
        """A pull between two chunks: the gate holds it (≤ BACKGROUND_HOLD_S a chunk) while a chat
        waits for its first token, as it holds background embedding batches."""
        self.gate.pause_for_interactive(cancelled)

    def stop_accepting(self) -> None:
        """Refuse new work; fail what still waits (the in-flight work drains)."""
        self.accepting = False
        for ticket in list(self.waiting):
            self._leave_queue(ticket)
            ticket.outcome = ShuttingDownError("the daemon is shutting down; retry once it is back")
            ticket.done.set()


class GenerationStream:
    """An admitted-or-waiting generation. Iterate for chunks; `aclose()` (or cancellation while
    iterating) leaves the queue or frees the slot at once. Iterate it inside `aclosing`."""

    def __init__(self, plane: ControlPlane, ticket: PlaneTicket, engine: LLMEngine, stack: AsyncExitStack):
        self.plane = plane
        self.ticket = ticket
        self.engine = engine
        self._stack = stack
        self._inner: AsyncIterator[GenerationChunk] | None = None
        self._admitted = False
        self._reported = False  # on_finished was called (exactly once per admitted stream)
        self._end_reason = "cancelled"  # what an end without a final chunk counts as
        self._closed = False
        self._started = trio.current_time()
        self._last_token_at: float | None = None
        self._awaiting_first = False  # counted in the gate's interactive_pending
        self.request_id = ticket.id

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._closed:
            raise StopAsyncIteration
        metrics, model = self.plane.metrics, self.ticket.model
        try:
            if self._inner is None:
                await self.plane._wait_turn(self.ticket)
                self._admitted = True
                if not self.ticket.meta.background:
                    self._awaiting_first = True
                    self.plane._interactive_waiting(+1)
                metrics.on_admitted(model, self.ticket.kind, trio.current_time() - self.ticket.enqueued_at)
                self._inner = self.engine.generate(self.ticket.payload)
            chunk = await self._inner.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise
        except EngineError as exc:  # the engine died or went away under this stream
            self._end_reason = "error"
            await self.aclose()
            raise EngineUnavailableError(f"model {model!r} failed: {exc}") from None
        except BaseException:
            await self.aclose()
            raise
        now = trio.current_time()
        if (chunk.token_ids or chunk.text or chunk.finish_reason) and self._awaiting_first:
            self._awaiting_first = False
            self.plane._interactive_waiting(-1)
        if chunk.token_ids or chunk.text:
            if self._last_token_at is None:
                metrics.on_first_token(model, now - self._started)
            else:  # a chunk can hold several tokens (a lagging consumer's are merged): one gap each
                n = len(chunk.token_ids) or 1
                metrics.on_token(model, (now - self._last_token_at) / n, n)
            self._last_token_at = now
        if chunk.finish_reason is not None:
            self._reported = True
            metrics.on_finished(model, self.ticket.kind, chunk.finish_reason, chunk.prompt_tokens, chunk.completion_tokens, now - self._started)
            if chunk.finish_reason == "error":
                await self.aclose()
                raise EngineUnavailableError(f"model {model!r} failed: {chunk.error or 'engine error'}")
        return chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._awaiting_first:
            self._awaiting_first = False
            self.plane._interactive_waiting(-1)
        with trio.CancelScope(shield=True):
            try:
                if self._inner is not None:
                    await cast(Any, self._inner).aclose()  # an async generator: AsyncIterator has no aclose
            finally:
                if self._admitted and not self._reported:
                    self._reported = True
                    self.plane.metrics.on_finished(
                        self.ticket.model, self.ticket.kind, self._end_reason, 0, 0, trio.current_time() - self._started
                    )
                if self._admitted or self.ticket.outcome == "admitted":  # the latter: admitted, never iterated past the wait
                    self.plane._generation_done(self.ticket.model)
                else:
                    self.plane._generation_withdrawn(self.ticket)
                await self._stack.aclose()

    async def collect(self) -> tuple[str, GenerationChunk]:
        """The whole text and the final chunk (for non-streaming replies)."""
        parts: list[str] = []
        last = GenerationChunk()
        try:
            async for chunk in self:
                parts.append(chunk.text)
                last = chunk
        finally:
            await self.aclose()
        return "".join(parts), last


__all__ = ["ControlPlane", "GenerationStream", "NullMetrics", "PlaneMetrics"]
