"""What callers (HTTP routes, RPC handlers, job stages) see of the control plane.

Every request goes through `ControlPlane`: it is classified (kind, priority, deadline), queued
with a bound, admitted by the active policy, and run on an engine from the pool. Errors are
typed so each door can answer in its own shape (OpenAI errors on HTTP, codes on RPC).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import AsyncIterator
from typing import Protocol

import msgspec
import trio

from sage_client.protocol import RequestKind

from sage_daemon.core.config import ModelConfig
from sage_daemon.core.errors import (
    ControlPlaneError,
    DeadlineExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    QueueFullError,
    ShuttingDownError,
)
from sage_daemon.engines.base import EmbeddingResult, GenerationChunk, GenerationRequest, ModelInfo, RerankResult

__all__ = [
    "ControlPlaneAPI", "ControlPlaneError", "GenerationStreamAPI", "QueueSnapshot", "ServedControlPlane", "DeadlineExceededError", "EngineUnavailableError", "HealthReport",
    "InvalidRequestError", "ModelInfo", "ModelNotFoundError", "Priority", "QueueEntry", "QueueFullError",
    "RequestKind", "RequestMeta", "ShuttingDownError",
]



class Priority(enum.IntEnum):
    """Lower value = more urgent. Job stages default to BACKGROUND."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4

    @classmethod
    def parse(cls, text: str) -> Priority:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(p.name.lower() for p in cls)
            raise InvalidRequestError(f"invalid priority {text!r}: use one of {names}", param="priority") from None


class RequestMeta(msgspec.Struct):
    """How a request is to be scheduled; built by the door from headers, metadata or the caller."""

    request_id: str
    priority: Priority = Priority.NORMAL
    deadline_s: float | None = None  # relative to arrival, from X-SAGE-Deadline-Ms
    caller: str = "http"  # http | rpc | job
    arrival: float = msgspec.field(default_factory=time.monotonic)
    keep_alive_s: float | None = None  # per-request keep-alive of the model (Ollama's keep_alive)

    @property
    def deadline_at(self) -> float | None:
        return None if self.deadline_s is None else self.arrival + self.deadline_s

    @property
    def background(self) -> bool:
        """Batch work (job stages, `background` priority): it may wait, or be cut short, for
        interactive work."""
        return self.priority >= Priority.BACKGROUND


class HealthReport(msgspec.Struct):
    """Whether the daemon can serve: ok only when every required engine can (GET /health)."""

    ok: bool
    reasons: list[str]  # why not, one line each ("model smollm2: loading", "engine minilm died: ...")
    models: list[ModelInfo]


class QueueEntry(msgspec.Struct):
    request_id: str
    model: str
    kind: RequestKind
    priority: str
    position: int  # 0 = next to be admitted
    waited_s: float
    estimated_wait_s: float | None


class GenerationStreamAPI(Protocol):
    """A generation handed to a door: iterate it for chunks (the first `__anext__` waits for
    admission); `aclose()` leaves the queue or frees the slot at once and is idempotent."""

    request_id: str

    def __aiter__(self) -> GenerationStreamAPI: ...

    async def __anext__(self) -> GenerationChunk: ...

    async def aclose(self) -> None: ...

    async def collect(self) -> tuple[str, GenerationChunk]:
        """The whole text and the final chunk (for replies that are not streamed); closes the stream."""


class Tokenized(msgspec.Struct):
    """POST /tokenize's answer from the plane: ids, each token's bytes when asked, the model's context."""

    tokens: list[int]
    pieces: list[bytes] | None
    max_model_len: int


class QueueSnapshot(msgspec.Struct):
    """The queue as `sagectl queue` shows it: the policy, the waiting requests, and the admitted
    generations per LLM model."""

    policy: str
    entries: list[QueueEntry]
    running: dict[str, int]


class ControlPlaneAPI(Protocol):
    """The surface the doors (HTTP routes, RPC handlers, job stages) call; they call nothing else
    of the plane. Typed errors (ControlPlaneError subclasses) come out of every method before any
    output is produced, except DeadlineExceededError and EngineUnavailableError, which can also
    end a generation stream that was already admitted."""

    def list_models(self) -> list[ModelInfo]: ...

    def get_model(self, name: str) -> ModelInfo:
        """Raises ModelNotFoundError naming the configured models."""

    async def load(self, name: str) -> ModelInfo:
        """Load a model now (it stays for its keep-alive); EngineUnavailableError if it cannot."""

    async def unload(self, name: str) -> ModelInfo:
        """Unload a model now; its in-flight requests end first."""

    async def put_model(self, model: ModelConfig) -> ModelInfo:
        """Serve `model` from now on (added, or redefined: the old engine is unloaded first)."""

    async def remove_model(self, name: str) -> ModelInfo:
        """Stop serving `name` (unloaded and gone from the list). InvalidRequestError while
        requests wait for it or run on it."""

    async def generate(self, model: str, kind: RequestKind, request: GenerationRequest, meta: RequestMeta) -> GenerationStreamAPI:
        """Validate (model exists and is an LLM, chat template present for chat, context fits,
        sampling values fit the model), enqueue (QueueFullError with retry_after_s when the
        queue is at its bound) and hand back the stream; iterating it waits for admission by the
        policy, then yields chunks. Iterate it inside `aclosing`."""

    async def embed(self, model: str, inputs: list[str] | list[list[int]], meta: RequestMeta, dimensions: int | None = None) -> EmbeddingResult:
        """Batched with other embedding requests to the same model by the policy. `dimensions`:
        vectors cut to that size (InvalidRequestError unless the model supports it)."""

    async def rerank(self, model: str, query: str, documents: list[str], meta: RequestMeta) -> RerankResult:
        """Relevance of each document to `query`, in the documents' order. A rerank model (a
        cross-encoder) scores the pairs, batched with other rerank requests to it by the policy;
        an embedding model scores by cosine similarity (as vLLM does). InvalidRequestError for
        an LLM or an empty document list."""

    async def tokenize(self, model: str, text: str, add_special: bool, with_pieces: bool, meta: RequestMeta) -> Tokenized:
        """The model's token ids of `text` (and each token's bytes when `with_pieces`).
        InvalidRequestError for a model whose tokenizer is not in this daemon (remote, vLLM)."""

    async def detokenize(self, model: str, token_ids: list[int], meta: RequestMeta) -> str:
        """The text of `token_ids`; InvalidRequestError for an id outside the vocabulary."""

    async def count_prompt_tokens(self, model: str, request: GenerationRequest, meta: RequestMeta) -> int:
        """The prompt tokens `request` would take (its chat template and tools rendered), without
        queueing it. InvalidRequestError for a model that counts no tokens here (a remote one)."""

    def health(self) -> HealthReport: ...

    def queue(self) -> list[QueueEntry]: ...

    def queue_snapshot(self) -> QueueSnapshot: ...

    @property
    def policy_name(self) -> str: ...

    def set_policy(self, name: str) -> str:
        """Switch the scheduling policy; returns the previous one. InvalidRequestError for an unknown name."""


class ServedControlPlane(ControlPlaneAPI, Protocol):
    """What the composition root runs: the doors' surface plus its lifetime. `Daemon` takes a
    factory of these (tests hand it a fake through that seam)."""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled (engine supervision, dispatching)."""

    def pause_for_interactive(self, cancelled: threading.Event) -> None:
        """Called between chunks of background work outside the engines (a model pull), on that
        work's thread: waits (bounded) while an interactive request waits for its first token."""

    def stop_accepting(self) -> None:
        """Refuse new work with ShuttingDownError; fail what still waits; in-flight work drains."""

    async def aclose(self) -> None:
        """Free the engines. Called once, after the drain."""
