"""A small in-test control plane implementing ServedControlPlane (ControlPlaneAPI plus its
lifetime): models, scripted streams, typed errors on demand and metrics recorded the way the real
one records them. The daemon builds it through its `plane_factory` seam (tests/http/conftest.py)."""

from __future__ import annotations

import hashlib
from typing import Any
import math
import threading
from collections.abc import AsyncIterator

import trio

from sage_daemon.control.api import (
    EngineUnavailableError,
    QueueSnapshot,
    ShuttingDownError,
    Tokenized,
    HealthReport,
    InvalidRequestError,
    ModelInfo,
    ModelNotFoundError,
    QueueEntry,
    QueueFullError,
    RequestKind,
    RequestMeta,
)
from sage_daemon.core.metrics import Metrics
from sage_daemon.engines.base import ChatTemplateMissingError, ContextOverflowError, EmbeddingResult, EngineError, GenerationChunk, GenerationRequest, RerankResult

MODELS = [
    ModelInfo(id="chatty", kind="llm", backend="fake", state="ready", n_ctx=512, chat_template=True),
    ModelInfo(id="base", kind="llm", backend="fake", state="ready", n_ctx=512, chat_template=False),
    ModelInfo(id="emb", kind="embedding", backend="fake", state="ready", dimensions=4),
]


def fake_vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 128) / 128.0 for b in digest[:4]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


class FakeControlPlane:
    """Prompts steer it: QUEUE_FULL → 429, OVERFLOW → context overflow, BUG → a plain bug,
    FAIL_MIDSTREAM → an engine error after two chunks, SLOW → tokens every 50 ms until closed,
    COUNT → numbered tokens (" t0", " t1", ...) without pause until max_tokens,
    RESTARTING → the engine is restarting (EngineError, as the real engines raise it), ERROR_CHUNK
    → a chunk that reports a failure. Embedding inputs "RESTARTING" and "BUG" do the same."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.accepting = True
        self.policy = "hybrid"
        self.healthy = True
        self.seen: list[tuple[str, RequestKind, GenerationRequest, RequestMeta]] = []
        self.embedded: list[tuple[str, list, RequestMeta]] = []
        self.running = 0
        self.closed_streams = 0

    def list_models(self) -> list[ModelInfo]:
        return list(MODELS)

    def get_model(self, name: str) -> ModelInfo:
        for m in MODELS:
            if m.id == name:
                return m
        raise ModelNotFoundError(f"model {name!r} not found; configured: {', '.join(m.id for m in MODELS)}", param="model")

    def tokenize(self, model: str, text: str) -> list[int]:
        return [len(w) for w in text.split()]

    async def tokenize(self, model: str, text: str, add_special: bool, with_pieces: bool, meta: RequestMeta) -> Tokenized:
        self.get_model(model)
        data = text.encode()
        return Tokenized(list(data), [bytes([b]) for b in data] if with_pieces else None, 512)

    async def detokenize(self, model: str, token_ids: list[int], meta: RequestMeta) -> str:
        self.get_model(model)
        if any(not 0 <= t < 256 for t in token_ids):
            raise InvalidRequestError("token ids are bytes here", param="tokens")
        return bytes(token_ids).decode("utf-8", "replace")

    async def count_prompt_tokens(self, model: str, request: GenerationRequest, meta: RequestMeta) -> int:
        self.get_model(model)
        return sum(len((m.content or "").split()) for m in request.messages or ())

    def health(self) -> HealthReport:
        return HealthReport(ok=self.healthy, reasons=[] if self.healthy else ["model chatty: engine died"], models=list(MODELS))

    def queue(self) -> list[QueueEntry]:
        return []

    async def generate(self, model: str, kind: RequestKind, request: GenerationRequest, meta: RequestMeta) -> AsyncIterator[GenerationChunk]:
        info = self.get_model(model)
        if info.kind != "llm":
            raise InvalidRequestError(f"model {model!r} is an embedding model", param="model")
        if kind == "chat" and not info.chat_template:
            raise ChatTemplateMissingError(f"model {model!r} has no chat template: use /v1/completions")
        text = request.prompt or " ".join(m.content or "" for m in request.messages or ()) or " ".join(map(str, request.prompt_tokens or ()))
        if "QUEUE_FULL" in text:
            raise QueueFullError("the queue of model 'chatty' is full (2 waiting)", retry_after_s=2.2)
        if "OVERFLOW" in text:
            raise ContextOverflowError(600, request.sampling.max_tokens, 512)
        if "BUG" in text:
            raise RuntimeError("a bug in the fake")
        if "RESTARTING" in text:
            raise EngineError(f"the engine of model {model!r} is restarting", retry_after_s=0.4)
        if not self.accepting:
            raise ShuttingDownError("the daemon is shutting down; retry once it is back")
        self.seen.append((model, kind, request, meta))
        await trio.lowlevel.checkpoint()
        return self._stream(model, kind, text, request)

    async def _stream(self, model: str, kind: str, text: str, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        prompt_tokens = len(text.split())
        with self.metrics.track(model, kind) as tracker:
            tracker.admitted()
            self.running += 1
            try:
                words = ["Hello", " world", ",", " again", "!"]
                limit = request.sampling.max_tokens
                produced = 0
                while True:
                    if "SLOW" in text:
                        await trio.sleep(0.05)
                        word = " tick"
                    elif "COUNT" in text:  # numbered tokens as fast as they are read, up to max_tokens
                        await trio.lowlevel.checkpoint()
                        word = f" t{produced}"
                    else:
                        await trio.lowlevel.checkpoint()
                        if produced >= len(words):
                            tracker.finished("stop", prompt_tokens=prompt_tokens, completion_tokens=produced)
                            yield GenerationChunk(finish_reason="stop", prompt_tokens=prompt_tokens, completion_tokens=produced)
                            return
                        word = words[produced]
                    if "FAIL_MIDSTREAM" in text and produced == 2:
                        raise EngineUnavailableError("engine for model 'chatty' died")
                    if "ERROR_CHUNK" in text and produced == 1:
                        yield GenerationChunk(finish_reason="error", error="decode failed")
                        return
                    produced += 1
                    tracker.tokens(1)
                    if produced >= limit:
                        tracker.finished("length", prompt_tokens=prompt_tokens, completion_tokens=produced)
                        yield GenerationChunk(text=word, token_ids=(produced,), finish_reason="length", prompt_tokens=prompt_tokens, completion_tokens=produced)
                        return
                    yield GenerationChunk(text=word, token_ids=(produced,))
            finally:
                self.running -= 1
                self.closed_streams += 1

    async def embed(self, model: str, inputs: list[str] | list[list[int]], meta: RequestMeta, dimensions: int | None = None) -> EmbeddingResult:
        info = self.get_model(model)
        if info.kind != "embedding":
            raise InvalidRequestError(f"model {model!r} is not an embedding model", param="model")
        if dimensions is not None and dimensions != info.dimensions:
            raise InvalidRequestError(f"model {model!r} does not support the dimensions parameter (its vectors have {info.dimensions})", param="dimensions")
        if inputs and not isinstance(inputs[0], str):
            raise InvalidRequestError("model 'emb' takes text, not token ids", param="input")
        if "RESTARTING" in inputs:
            raise EngineError(f"the engine of model {model!r} is restarting")
        if "BUG" in inputs:
            raise RuntimeError("a bug in the fake")
        self.embedded.append((model, inputs, meta))
        await trio.lowlevel.checkpoint()
        self.metrics.on_embedding_batch(model, len(inputs))
        return EmbeddingResult(vectors=[fake_vector(t) for t in inputs], prompt_tokens=sum(len(t.split()) for t in inputs), dimensions=4)

    async def rerank(self, model: str, query: str, documents: list[str], meta: RequestMeta) -> RerankResult:
        """Scores by shared words (the door's shape and ordering are what is tested with it)."""
        info = self.get_model(model)
        if info.kind == "llm":
            raise InvalidRequestError(f"model {model!r} is not a reranker", param="model")
        if not documents:
            raise InvalidRequestError("documents must not be empty", param="documents")
        await trio.lowlevel.checkpoint()
        words = set(query.lower().split())
        scores = [len(words & set(d.lower().split())) / (len(words) or 1) for d in documents]
        return RerankResult(scores, prompt_tokens=sum(len(d.split()) + len(words) for d in documents))

    # -- the rest of ControlPlaneAPI, and the lifetime the daemon runs ----------------------

    async def put_model(self, model: Any) -> ModelInfo:
        raise InvalidRequestError("the in-test control plane serves a fixed list of models", param="name")

    async def remove_model(self, name: str) -> ModelInfo:
        raise InvalidRequestError("the in-test control plane serves a fixed list of models", param="name")

    async def load(self, name: str) -> ModelInfo:
        return self.get_model(name)

    async def unload(self, name: str) -> ModelInfo:
        return self.get_model(name)

    def queue_snapshot(self) -> QueueSnapshot:
        return QueueSnapshot(policy=self.policy, entries=[], running={"chatty": self.running})

    @property
    def policy_name(self) -> str:
        return self.policy

    def set_policy(self, name: str) -> str:
        previous, self.policy = self.policy, name
        return previous

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def pause_for_interactive(self, cancelled: threading.Event) -> None:
        pass

    def stop_accepting(self) -> None:
        self.accepting = False

    async def aclose(self) -> None:
        pass
