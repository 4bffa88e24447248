"""The dashboard's view of the control plane over time: one sampler, many readers.

`Timeline.run` takes a sample once a second (and at once after `poke()`, e.g. a policy switch):
the queue per model, the generations running per model (the decode batch), which kind of engine
held the CPU gate and for what share of the second (control/gate.py), the embedding batch size,
request/token/text/error rates, and TTFT and embedding-latency percentiles over the last
`WINDOW_S` seconds, from the daemon's Prometheus metrics (core/metrics.py: the histograms'
bucket counts are diffed between samples, the way Prometheus' `histogram_quantile` reads them).

The chart points are kept in a ring buffer of the last `HISTORY` samples (five minutes); with
each sample goes the plane's current state (models, the waiting requests, the policy), made by
the RPC handlers' own views (`rpc/handlers.py`: one implementation for sagectl, the dashboard
and its tests). Readers (the SSE route in http/admin.py) wait on `wait_after(seq)` and are handed
the points they have not seen and the latest state: one event a second per subscriber from the
shared buffer, however many subscribers there are, and nothing sampled per subscriber.

Everything here runs on the trio thread and does no I/O; a sample costs well under a millisecond.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from sage_client import protocol as p
from sage_daemon.control.gate import CpuGate
from sage_daemon.core.logging import log
from sage_daemon.engines.pool import estimate_memory_bytes
from sage_daemon.engines.sources import SourceError, resolve_local_source
from sage_daemon.services import Services

logger = logging.getLogger("sage.http")

INTERVAL_S = 1.0
HISTORY = 300  # samples kept: five minutes at one a second
WINDOW_S = 10  # percentiles are over the last this many samples (a second alone holds too few requests)
MAX_QUEUE_ROWS = 200  # waiting requests sent with each state (the total is always sent)

View = Callable[[], Awaitable[Any]]


class Point(msgspec.Struct):
    """One second of the plane, as the charts draw it. Rates are per second over the interval;
    percentiles in seconds over the last WINDOW_S seconds (None: no request finished then)."""

    seq: int
    t: float  # wall-clock time (seconds since the epoch)
    waiting: int  # requests queued, all models
    running_llm: int  # generations admitted on LLM engines: the continuous batch being decoded
    gate_llm: float  # share of the interval the chat engines held the CPU gate (0..1)
    gate_embedding: float  # the same for embedding and rerank engines
    gate_steps_llm: int
    gate_steps_embedding: int
    embedding_batch: float | None  # mean inputs per embedding batch run in the interval
    requests_s: float
    tokens_s: float  # generated tokens
    embedding_texts_s: float  # texts embedded (and pairs scored by rerankers)
    errors_s: float
    ttft_p50: float | None
    ttft_p95: float | None
    embedding_p50: float | None  # e2e latency of embedding requests
    embedding_p95: float | None
    waiting_by_model: dict[str, int] = {}
    running_by_model: dict[str, int] = {}


class Tick(msgspec.Struct):
    """What a subscriber is sent: the points it has not seen (all of the history on its first
    tick) and the plane's state now."""

    points: list[Point]
    state: dict[str, Any]


def histogram_quantile(q: float, bounds: list[float], counts: list[float]) -> float | None:
    """The q-quantile of observations counted per bucket (`counts[i]` observations ≤ `bounds[i]`,
    cumulative, the last bound +inf), interpolated linearly inside its bucket as Prometheus does.
    None when there are no observations."""
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if bound == float("inf"):
                return previous_bound  # beyond the last finite bucket: its bound is what is known
            inside = count - previous_count
            return previous_bound + (bound - previous_bound) * ((rank - previous_count) / inside if inside else 1.0)
        previous_bound, previous_count = bound, count
    return previous_bound


class _Histograms:
    """Cumulative bucket counts of one histogram metric, summed over the models chosen."""

    @staticmethod
    def read(metric: Any, models: set[str]) -> tuple[list[float], list[float], float, float]:
        """(bounds, cumulative counts, sum, count) over the label sets whose model is in `models`."""
        buckets: dict[float, float] = {}
        total_sum = total_count = 0.0
        for family in metric.collect():
            for sample in family.samples:
                if sample.labels.get("model_name") not in models:
                    continue
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name.endswith("_sum"):
                    total_sum += sample.value
                elif sample.name.endswith("_count"):
                    total_count += sample.value
        bounds = sorted(buckets)
        return bounds, [buckets[b] for b in bounds], total_sum, total_count


def _counter_total(metric: Any, where: Callable[[dict[str, str]], bool] = lambda labels: True) -> float:
    total = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and where(sample.labels):
                total += sample.value
    return total


def _gauge_by_model(metric: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for family in metric.collect():
        for sample in family.samples:
            model = sample.labels.get("model_name", "")
            if sample.value:
                out[model] = out.get(model, 0) + int(sample.value)
    return out


class Timeline:
    """The sampler and its ring buffer; `views` are the RPC handlers' views of the plane
    (models, queue, status, policy), each an awaitable taking no argument."""

    def __init__(self, services: Services, views: dict[str, View], interval_s: float = INTERVAL_S, history: int = HISTORY):
        self.services = services
        self.views = views
        self.interval_s = interval_s
        self.points: deque[Point] = deque(maxlen=history)
        self.state: dict[str, Any] = {}
        self.seq = 0  # the last point's seq (or state change's): readers wait for it to move on
        self._changed = trio.Event()
        self._poked = trio.Event()
        self._last_t = 0.0
        self._last: dict[str, float] = {}
        self._windows: dict[str, deque[tuple[list[float], list[float]]]] = {"ttft": deque(maxlen=WINDOW_S + 1), "embedding": deque(maxlen=WINDOW_S + 1)}
        self._memory_cache: dict[tuple[str, str], int | None] = {}
        self.running = False

    # -- the sampler ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample every `interval_s` (sooner after `poke()`) until cancelled."""
        self.running = True
        task_status.started()
        try:
            while True:
                try:
                    await self.sample()
                except Exception as exc:  # a view that fails must not stop the dashboard: say so, try again
                    log(logger, logging.WARNING, "dashboard sample failed", error=f"{type(exc).__name__}: {exc}")
                with trio.move_on_after(self.interval_s):
                    await self._poked.wait()
                self._poked = trio.Event()
        finally:
            self.running = False

    def poke(self) -> None:
        """Take the next sample now (the state changed: a policy switch, a model loaded)."""
        self._poked.set()

    async def sample(self) -> Point:
        now = time.time()
        state = await self._state()
        metrics = self.services.metrics
        kinds = {m["id"]: m["kind"] for m in state["models"]}
        llms = {m for m, k in kinds.items() if k == "llm"}
        batched = {m for m, k in kinds.items() if k != "llm"}

        gate = getattr(self.services.control, "gate", None)  # the real plane's CpuGate; fakes have none
        counters = {
            "requests": _counter_total(metrics.request_success),
            "errors": _counter_total(metrics.request_success, lambda labels: labels.get("finished_reason") == "error"),
            "tokens": _counter_total(metrics.generation_tokens),
        }
        _, _, batch_sum, batch_count = _Histograms.read(metrics.embedding_batch_size, batched)
        counters["texts"], counters["batches"] = batch_sum, batch_count
        if isinstance(gate, CpuGate):
            counters.update(held_llm=gate.held_s["llm"], held_embedding=gate.held_s["embedding"], steps_llm=gate.steps["llm"], steps_embedding=gate.steps["embedding"])
        dt = now - self._last_t if self._last_t else 0.0
        delta = {k: v - self._last.get(k, v) for k, v in counters.items()}
        self._last, self._last_t = counters, now

        def rate(key: str) -> float:
            return round(delta[key] / dt, 3) if dt > 0 else 0.0

        def share(key: str) -> float:
            return round(min(1.0, max(0.0, delta.get(key, 0.0) / dt)), 3) if dt > 0 else 0.0

        ttft = self._window("ttft", *_Histograms.read(metrics.time_to_first_token, llms)[:2])
        latency = self._window("embedding", *_Histograms.read(metrics.e2e_request_latency, batched)[:2])
        running = _gauge_by_model(metrics.num_requests_running)
        waiting = _gauge_by_model(metrics.num_requests_waiting)
        self.seq += 1
        point = Point(
            seq=self.seq,
            t=round(now, 3),
            waiting=sum(waiting.values()),
            running_llm=sum(n for m, n in running.items() if m in llms),
            gate_llm=share("held_llm"),
            gate_embedding=share("held_embedding"),
            gate_steps_llm=int(delta.get("steps_llm", 0)),
            gate_steps_embedding=int(delta.get("steps_embedding", 0)),
            embedding_batch=round(delta["texts"] / delta["batches"], 2) if delta["batches"] else None,
            requests_s=rate("requests"),
            tokens_s=rate("tokens"),
            embedding_texts_s=rate("texts"),
            errors_s=rate("errors"),
            ttft_p50=_round(histogram_quantile(0.5, *ttft)),
            ttft_p95=_round(histogram_quantile(0.95, *ttft)),
            embedding_p50=_round(histogram_quantile(0.5, *latency)),
            embedding_p95=_round(histogram_quantile(0.95, *latency)),
            waiting_by_model=waiting,
            running_by_model=running,
        )
        state["totals"] = {"requests": counters["requests"], "errors": counters["errors"], "tokens": counters["tokens"], "embedding_texts": counters["texts"]}
        state["gate"] = {"kind": "interleave" if isinstance(gate, CpuGate) else "none", "interactive_pending": getattr(gate, "interactive_pending", 0)}
        self.points.append(point)
        self.state = state
        self._wake()
        return point

    def _window(self, name: str, bounds: list[float], counts: list[float]) -> tuple[list[float], list[float]]:
        """The bucket counts observed over the last WINDOW_S samples (bounds, cumulative counts)."""
        window = self._windows[name]
        window.append((bounds, counts))
        old_bounds, old_counts = window[0]
        if old_bounds != bounds:  # a model's first observation added label sets: diff what both have
            before = dict(zip(old_bounds, old_counts))
            return bounds, [c - before.get(b, 0.0) for b, c in zip(bounds, counts)]
        return bounds, [c - o for c, o in zip(counts, old_counts)]

    async def _state(self) -> dict[str, Any]:
        models = await self.views["models"]()
        queue = await self.views["queue"]()
        status = await self.views["status"]()
        policy = await self.views["policy"]()
        now = time.time()
        rows = []
        for row in models.models:
            view = msgspec.to_builtins(row)
            view["keep_alive_left_s"] = None if row.keep_alive_until is None else round(max(0.0, row.keep_alive_until - now), 1)
            if "memory_bytes" not in view:
                view["memory_bytes"] = await self._memory(row) if row.state in ("ready", "loading", "draining") else None
            rows.append(view)
        return {
            "t": round(now, 3),
            "policy": policy.policy,
            "policies": list(p.POLICY_NAMES),
            "daemon": {"state": status.state, "in_flight": status.in_flight, "uptime_s": round(status.uptime_s, 1), "version": status.version},
            "models": rows,
            "queue": {"total": len(queue.entries), "entries": msgspec.to_builtins(queue.entries[:MAX_QUEUE_ROWS]), "running": queue.running},
        }

    async def _memory(self, row: p.ModelRow) -> int | None:
        """The resident size the engine pool reckons for a loaded model (its weights' files plus
        a third: engines/pool.estimate_memory_bytes), worked out once per model and backend.
        None where it is not known here (remote and vLLM models)."""
        key = (row.id, row.backend)
        if key not in self._memory_cache:
            self._memory_cache[key] = await trio.to_thread.run_sync(self._estimate, row.id, row.backend)
        return self._memory_cache[key]

    def _estimate(self, name: str, backend: str) -> int | None:
        model = next((m for m in self.services.config.models if m.name == name), None)
        source = {"llamacpp": model.sources.llamacpp, "sentence-transformers": model.sources.sentence_transformers}.get(backend, "") if model else ""
        if model is None or not source:
            return None
        try:
            return estimate_memory_bytes(model, resolve_local_source(source, self.services.paths.data_dir)) or None
        except SourceError:
            return None

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- the readers ---------------------------------------------------------------------

    def since(self, seq: int) -> list[Point]:
        """The points after `seq` still in the buffer (all of them for seq 0)."""
        return [point for point in self.points if point.seq > seq]

    async def wait_after(self, seq: int) -> None:
        """Return once there is a point after `seq`."""
        while self.seq <= seq:
            await self._changed.wait()

    def tick(self, seq: int) -> Tick:
        return Tick(self.since(seq), self.state)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
