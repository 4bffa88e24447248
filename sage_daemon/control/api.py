"""What callers (HTTP routes, RPC handlers, job stages) see of the control plane.

Every request goes through `ControlPlane`: it is classified (kind, priority, deadline), queued
with a bound, admitted by the active policy, and run on an engine from the pool. Errors are
typed so each door can answer in its own shape (OpenAI errors on HTTP, codes on RPC).
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator
from typing import Literal, Protocol

import msgspec

from sage_daemon.core.errors import (
    ControlPlaneError,
    DeadlineExceededError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    QueueFullError,
    ShuttingDownError,
)
from sage_daemon.engines.base import EmbeddingResult, GenerationChunk, GenerationRequest, ModelInfo

__all__ = [
    "ControlPlaneAPI", "ControlPlaneError", "DeadlineExceededError", "EngineUnavailableError", "HealthReport",
    "InvalidRequestError", "ModelInfo", "ModelNotFoundError", "Priority", "QueueEntry", "QueueFullError",
    "RequestKind", "RequestMeta", "ShuttingDownError",
]

RequestKind = Literal["chat", "completion", "embedding"]


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


class ControlPlaneAPI(Protocol):
    """The surface the doors call. Typed errors (ControlPlaneError subclasses) come out of every
    method before any output is produced, except DeadlineExceededError and EngineUnavailableError,
    which can also end a generation stream that was already admitted."""

    def list_models(self) -> list[ModelInfo]: ...

    def get_model(self, name: str) -> ModelInfo:
        """Raises ModelNotFoundError naming the configured models."""

    async def generate(self, model: str, kind: RequestKind, request: GenerationRequest, meta: RequestMeta) -> AsyncIterator[GenerationChunk]:
        """Validate (model exists and is an LLM, chat template present for chat, context fits),
        enqueue (QueueFullError with retry_after_s when the queue is at its bound), wait for
        admission by the policy, then stream chunks. Must be called as
        `stream = await plane.generate(...)`; iterating `stream` yields GenerationChunk; closing
        it (or cancelling the consumer) leaves the queue or frees the slot at once."""

    async def embed(self, model: str, inputs: list[str] | list[list[int]], meta: RequestMeta) -> EmbeddingResult:
        """Batched with other embedding requests to the same model by the policy."""

    def tokenize(self, model: str, text: str) -> list[int]: ...

    def health(self) -> HealthReport: ...

    def queue(self) -> list[QueueEntry]: ...
