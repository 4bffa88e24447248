"""The daemon's Prometheus metrics: vLLM's names under a `sage:` prefix, one registry per daemon.

`Metrics` owns a private `CollectorRegistry`, so several daemons in one test process never
collide. The control plane records each hop through the small `on_*` methods (or through
`track()`, which keeps the gauges balanced whatever happens to the request); `GET /metrics`
renders the registry with `render()`. The `on_*` methods are the control plane's `PlaneMetrics` protocol
(sage_daemon/control/plane.py).

Gauges per model: `sage:num_requests_running` (admitted, not finished), `sage:num_requests_waiting`
(queued, not admitted) and `sage:queue_depth{kind}` (the same, split by request kind).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Buckets follow vLLM's choices for the same metrics.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

FINISHED_REASONS = ("stop", "length", "cancelled", "error")


class Metrics:
    """Every metric of one daemon, in its own registry. All methods are cheap and never raise
    for a well-formed call; they may be called from the trio thread only (prometheus-client is
    thread-safe, but the gauges' meaning relies on calls being ordered per request)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.num_requests_running = Gauge("sage:num_requests_running", "Requests admitted to an engine and not finished.", ["model_name"], registry=r)
        self.num_requests_waiting = Gauge("sage:num_requests_waiting", "Requests queued and not yet admitted.", ["model_name"], registry=r)
        self.queue_depth = Gauge("sage:queue_depth", "Requests queued, per model and request kind (chat, completion, embedding, rerank).", ["model_name", "kind"], registry=r)
        self.time_to_first_token = Histogram("sage:time_to_first_token_seconds", "Time from arrival to the first generated token.", ["model_name"], buckets=TTFT_BUCKETS, registry=r)
        self.inter_token_latency = Histogram("sage:inter_token_latency_seconds", "Time between two generated tokens of a request.", ["model_name"], buckets=ITL_BUCKETS, registry=r)
        self.e2e_request_latency = Histogram("sage:e2e_request_latency_seconds", "Time from arrival to the end of a request.", ["model_name"], buckets=LATENCY_BUCKETS, registry=r)
        self.request_queue_time = Histogram("sage:request_queue_time_seconds", "Time a request waited in the queue before admission.", ["model_name"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("sage:prompt_tokens", "Prompt tokens processed (embedding inputs included).", ["model_name"], registry=r)
        self.generation_tokens = Counter("sage:generation_tokens", "Tokens generated.", ["model_name"], registry=r)
        self.request_success = Counter("sage:request_success", "Requests finished, by finished_reason (stop, length, cancelled, error).", ["model_name", "finished_reason"], registry=r)
        self._itl_by_model: dict[str, Histogram] = {}  # inter_token_latency's child per model (labels are never removed)
        self.embedding_batch_size = Histogram("sage:embedding_batch_size", "Inputs per embedding batch (or (query, document) pairs per rerank batch) run on an engine.", ["model_name"], buckets=BATCH_BUCKETS, registry=r)

    # -- the hops of one request (the control plane's PlaneMetrics protocol) ------------------

    def on_queued(self, model: str, kind: str) -> None:
        """A request entered the queue of `model` (kind: chat | completion | embedding)."""
        self.num_requests_waiting.labels(model).inc()
        self.queue_depth.labels(model, kind).inc()

    def on_dequeued(self, model: str, kind: str) -> None:
        """A request left the queue, for any reason (admitted, cancelled, expired, shutdown)."""
        self.num_requests_waiting.labels(model).dec()
        self.queue_depth.labels(model, kind).dec()

    def on_admitted(self, model: str, kind: str, queue_time_s: float) -> None:
        """A request (already dequeued) started running after waiting `queue_time_s`."""
        self.num_requests_running.labels(model).inc()
        self.request_queue_time.labels(model).observe(max(0.0, queue_time_s))

    def on_first_token(self, model: str, ttft_s: float) -> None:
        """The first token of a generation, `ttft_s` after the request arrived."""
        self.time_to_first_token.labels(model).observe(max(0.0, ttft_s))

    def on_token(self, model: str, itl_s: float, n: int = 1) -> None:
        """`n` more tokens arrived, `itl_s` apart (one observation per gap)."""
        hist = self._itl_by_model.get(model)
        if hist is None:  # labels() per call was a measurable part of a streamed token's cost
            hist = self._itl_by_model[model] = self.inter_token_latency.labels(model)
        gap = max(0.0, itl_s)
        for _ in range(n):
            hist.observe(gap)

    def on_finished(self, model: str, kind: str, finish_reason: str, prompt_tokens: int = 0, completion_tokens: int = 0, e2e_s: float | None = None) -> None:
        """An admitted request ended (finish_reason: stop | length | cancelled | error). Call it
        exactly once per on_admitted, also when the client went away (then "cancelled")."""
        self.num_requests_running.labels(model).dec()
        self.request_success.labels(model, finish_reason).inc()
        if prompt_tokens:
            self.prompt_tokens.labels(model).inc(prompt_tokens)
        if completion_tokens:
            self.generation_tokens.labels(model).inc(completion_tokens)
        if e2e_s is not None:
            self.e2e_request_latency.labels(model).observe(max(0.0, e2e_s))

    def on_embedding_batch(self, model: str, texts: int) -> None:
        """An engine ran one embedding batch of `texts` inputs."""
        self.embedding_batch_size.labels(model).observe(texts)

    @contextmanager
    def track(self, model: str, kind: str, arrival: float | None = None) -> Iterator[RequestTracker]:
        """Record one request from queueing to its end; the gauges stay balanced even when the
        block is left by an exception or a cancellation (then it counts as cancelled/error)."""
        tracker = RequestTracker(self, model, kind, time.monotonic() if arrival is None else arrival)
        self.on_queued(model, kind)
        try:
            yield tracker
        except BaseException as exc:
            tracker._abandon("error" if isinstance(exc, Exception) else "cancelled")
            raise
        else:
            tracker._abandon("cancelled")

    # -- exposition ------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, **labels: str) -> float | None:
        """A sample's current value (for tests and `sagectl`), e.g. value("sage:num_requests_running", model_name="smollm2")."""
        return self.registry.get_sample_value(name, labels)


class RequestTracker:
    """One request's clock; made by `Metrics.track()`."""

    def __init__(self, metrics: Metrics, model: str, kind: str, arrival: float):
        self.metrics = metrics
        self.model = model
        self.kind = kind
        self.arrival = arrival
        self.admitted_at: float | None = None
        self.last_token_at: float | None = None
        self.done = False

    def admitted(self) -> None:
        if self.admitted_at is None and not self.done:
            self.admitted_at = time.monotonic()
            self.metrics.on_dequeued(self.model, self.kind)
            self.metrics.on_admitted(self.model, self.kind, self.admitted_at - self.arrival)

    def tokens(self, n: int = 1) -> None:
        """`n` tokens just arrived (one chunk)."""
        if n <= 0 or self.done:
            return
        now = time.monotonic()
        if self.last_token_at is None:
            self.metrics.on_first_token(self.model, now - self.arrival)
            n -= 1
        elif n:
            self.metrics.on_token(self.model, (now - self.last_token_at) / n, n)
            n = 0
        if n:
            self.metrics.on_token(self.model, 0.0, n)
        self.last_token_at = now

    def finished(self, finish_reason: str, *, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        if self.done:
            return
        if self.admitted_at is None:
            self.admitted()
        self.done = True
        self.metrics.on_finished(self.model, self.kind, finish_reason, prompt_tokens, completion_tokens, time.monotonic() - self.arrival)

    def _abandon(self, finish_reason: str) -> None:
        if self.done:
            return
        if self.admitted_at is None:
            self.done = True
            self.metrics.on_dequeued(self.model, self.kind)
        else:
            self.finished(finish_reason)
