"""SentenceTransformersEngine: batch embeddings with sentence-transformers on one thread the engine owns.

All model work (encode, tokenize, forward on token ids) runs on a single dedicated worker thread
fed by a queue: torch's intra-op thread pool is then used by one caller at a time, and trio
tasks only wait on an event. An exception inside the model kills the worker on purpose (the
torch state after a failure is not trusted): pending and later calls fail with EngineError and
health() says why, until the pool reloads the engine.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal, TypeVar

import msgspec
import trio

from sage_daemon.engines.base import EmbeddingResult, EngineError, EngineHealth, EngineState, EngineStats, NullGate, StepGate

T = TypeVar("T")


class SentenceTransformersSpec(msgspec.Struct, frozen=True):
    """How to build a SentenceTransformersEngine (the pool fills it from `[[models]]`)."""

    name: str
    model_path: str  # a local folder; nothing downloads
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int | None = None  # torch intra-op threads; None = leave torch's setting alone
    normalize: bool = True
    max_batch: int = 64  # texts per forward pass (and per StepGate hold)
    supports_dimensions: bool = False  # True only for Matryoshka-trained models


_ID_FEATURES = ("input_ids", "attention_mask", "token_type_ids")  # what embed_tokens can build


class DimensionsNotSupportedError(ValueError):
    """A `dimensions` request to a model that was not trained for truncation: a client's 400."""


def force_hf_offline() -> None:
    """Make Hugging Face libraries refuse the network, even if they were imported before."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # A daemon's log is no place for progress bars ("Loading weights: 100%|███|").
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # read once at import: flip the cached value too
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def truncate_dimensions(vectors: list[list[float]], dimensions: int) -> list[list[float]]:
    """Matryoshka-style truncation: keep the first `dimensions` components, renormalise to unit length."""
    out = []
    for vector in vectors:
        head = vector[:dimensions]
        norm = math.sqrt(sum(x * x for x in head)) or 1.0
        out.append([x / norm for x in head])
    return out


class _Job(Generic[T]):
    """One call handed to the worker thread; completion is signalled on the caller's trio loop."""

    __slots__ = ("fn", "token", "done", "result", "error", "abandoned")

    def __init__(self, fn: Callable[[], T], token: trio.lowlevel.TrioToken):
        self.fn = fn
        self.token = token
        self.done = trio.Event()
        self.result: T | None = None
        self.error: str | None = None
        self.abandoned = False  # the caller was cancelled: skip it if not started

    def finish(self) -> None:
        try:
            self.token.run_sync_soon(self.done.set)
        except trio.RunFinishedError:
            pass  # the caller's trio run is gone; nobody waits


class _StopWorker:
    pass


class SentenceTransformersEngine:
    """An EmbeddingEngine over a local sentence-transformers model."""

    kind: Literal["embedding"] = "embedding"
    backend = "sentence-transformers"

    def __init__(self, spec: SentenceTransformersSpec, gate: StepGate | None = None):
        self.spec = spec
        self.name = spec.name
        self.gate: StepGate = gate or NullGate()
        self.supports_dimensions = spec.supports_dimensions
        self.dimensions = 0
        self.max_seq_length = 0
        self.device = "cpu"
        self._model: Any = None
        self._special_prefix: list[int] = []  # special tokens the tokenizer puts around a text
        self._special_suffix: list[int] = []
        self._feature_probe: dict[str, Any] = {}  # the keys the model's preprocess() produces
        self._state = EngineState.STOPPED
        self._detail = ""
        self._jobs: queue.SimpleQueue[_Job[Any] | _StopWorker] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()  # orders "worker died" against new submissions
        self._worker_dead: str | None = None
        self._requests_total = 0
        self._prompt_tokens_total = 0
        self._truncated_total = 0
        self._background_step = False  # the worker is running a background batch (read by _at_yield_point)

    # -- lifecycle -------------------------------------------------------------------------

    async def load(self) -> None:
        if self._state is EngineState.READY:
            return
        self._state, self._detail = EngineState.LOADING, ""
        try:
            model = await trio.to_thread.run_sync(self._load_blocking)
        except Exception as exc:
            self._state, self._detail = EngineState.ERROR, f"loading {self.spec.model_path} failed: {exc}"
            raise EngineError(self._detail) from exc
        self._model = model
        self.dimensions = int(model.get_embedding_dimension())
        self.max_seq_length = int(model.max_seq_length)
        self._special_prefix, self._special_suffix, self._feature_probe = await trio.to_thread.run_sync(_token_layout, model)
        self._jobs = queue.SimpleQueue()
        self._worker_dead = None
        self._worker = threading.Thread(target=self._worker_loop, name=f"embed-{self.name}", daemon=True)
        self._worker.start()
        self._state, self._detail = EngineState.READY, f"{self.dimensions} dims, max {self.max_seq_length} tokens on {self.device}"

    def _load_blocking(self) -> Any:
        force_hf_offline()
        import torch
        from sentence_transformers import SentenceTransformer

        device = self.spec.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.spec.threads is not None:
            torch.set_num_threads(self.spec.threads)
        self.device = device
        model = SentenceTransformer(self.spec.model_path, device=device, local_files_only=True)
        model.eval()
        for part in _yield_points(model):
            part.register_forward_pre_hook(self._at_yield_point)
        return model

    async def unload(self) -> None:
        worker = self._worker
        if worker is not None:
            self._jobs.put(_StopWorker())
            await trio.to_thread.run_sync(worker.join)
            self._fail_pending("the engine was unloaded")
        self._worker = None
        self._worker_dead = None
        self._model = None
        self._state, self._detail = EngineState.STOPPED, ""

    def health(self) -> EngineHealth:
        if self._worker_dead is not None:
            return EngineHealth(EngineState.ERROR, False, self._worker_dead)
        return EngineHealth(self._state, self._state is EngineState.READY, self._detail)

    def stats(self) -> EngineStats:
        return EngineStats(
            slots_total=1,
            slots_busy=0 if self._jobs.empty() else 1,
            requests_total=self._requests_total,
            prompt_tokens_total=self._prompt_tokens_total,
            extra={"truncated_inputs_total": float(self._truncated_total)},
        )

    # -- the worker thread -------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if isinstance(job, _StopWorker):
                return
            if job.abandoned:
                job.finish()
                continue
            try:
                job.result = job.fn()
            except BaseException as exc:  # noqa: BLE001 - any model failure ends this worker
                cause = f"embedding worker died: {type(exc).__name__}: {exc}"
                with self._worker_lock:  # dead before anyone hears of it: no call may queue behind us
                    self._worker_dead = cause
                self._state, self._detail = EngineState.ERROR, cause
                job.error = cause
                job.finish()
                self._fail_pending(cause)
                return
            job.finish()

    def _fail_pending(self, cause: str) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, _Job):
                job.error = cause
                job.finish()

    async def _run_on_worker(self, fn: Callable[[], T]) -> T:
        job: _Job[T] = _Job(fn, trio.lowlevel.current_trio_token())
        with self._worker_lock:
            if self._worker_dead is not None:
                raise EngineError(f"{self.name}: {self._worker_dead}")
            if self._worker is None or self._model is None:
                raise EngineError(f"{self.name} is not loaded")
            self._jobs.put(job)
        try:
            await job.done.wait()
        except trio.Cancelled:
            job.abandoned = True  # torch cannot be interrupted; a started batch runs to its end
            raise
        if job.error is not None:
            raise EngineError(f"{self.name}: {job.error}")
        return job.result  # type: ignore[return-value]

    # -- embedding ---------------------------------------------------------------------------

    async def embed(self, texts: list[str], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        """Embed `texts` (inputs longer than max_seq_length are cut, and counted in `truncated`)."""
        self._check_dimensions(dimensions)
        if not texts:
            return EmbeddingResult([], 0, 0, self.dimensions)
        result = await self._run_on_worker(lambda: self._embed_texts_blocking(list(texts), background))
        return self._finish(result, dimensions)

    async def embed_tokens(self, token_lists: list[list[int]], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        """Embed pre-tokenized inputs (OpenAI's token-array input).

        The ids (as from `tokenize()`, without special tokens) are fed to the model directly,
        wrapped in the tokenizer's special tokens: no decode/re-encode round trip.
        """
        self._check_dimensions(dimensions)
        if not token_lists:
            return EmbeddingResult([], 0, 0, self.dimensions)
        if self._model is None:
            raise EngineError(f"{self.name} is not loaded")
        unsupported = [k for k, v in self._feature_probe.items() if hasattr(v, "shape") and k not in _ID_FEATURES]
        if unsupported:
            raise ValueError(f"token-id input is not supported for model {self.name} (its inputs include {unsupported[0]!r})")
        vocab = len(self._model.tokenizer)
        for ids in token_lists:
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside this model's vocabulary (0..{vocab - 1})")
        result = await self._run_on_worker(lambda: self._embed_ids_blocking([list(ids) for ids in token_lists], background))
        return self._finish(result, dimensions)

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens (what OpenAI's token-array input carries).

        Async because it runs on the worker: a Hugging Face tokenizer is not safe to share
        between threads while another call changes its truncation settings.
        """
        return await self._run_on_worker(lambda: list(self._model.tokenizer(text, add_special_tokens=False)["input_ids"]))

    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None or dimensions == self.dimensions:
            return
        if not self.supports_dimensions:
            raise DimensionsNotSupportedError(f"model {self.name} does not support the dimensions parameter")
        if not 0 < dimensions <= self.dimensions:
            raise DimensionsNotSupportedError(f"dimensions must be between 1 and {self.dimensions}, got {dimensions}")

    def _finish(self, result: EmbeddingResult, dimensions: int | None) -> EmbeddingResult:
        self._requests_total += 1
        self._prompt_tokens_total += result.prompt_tokens
        self._truncated_total += result.truncated
        if dimensions is not None and dimensions != self.dimensions:
            result.vectors = truncate_dimensions(result.vectors, dimensions)
            result.dimensions = dimensions
        return result

    def _gated(self, fn: Callable[[], T], background: bool = False) -> T:
        self.gate.acquire(background)
        self._background_step = background
        try:
            return fn()
        finally:
            self._background_step = False
            self.gate.release()

    def _at_yield_point(self, module: Any, args: Any) -> None:
        """A forward pre-hook on each block of each encoder layer: a background batch's yield points."""
        if self._background_step:
            self.gate.yield_to_interactive()

    def _embed_texts_blocking(self, texts: list[str], background: bool = False) -> EmbeddingResult:
        model = self._model
        limit = self.max_seq_length
        # Full lengths with special tokens, untruncated, to count what was cut.
        full_lengths = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]]
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.spec.max_batch):
            batch = texts[start : start + self.spec.max_batch]
            array = self._gated(
                lambda: model.encode(batch, batch_size=len(batch), normalize_embeddings=self.spec.normalize, convert_to_numpy=True, show_progress_bar=False),
                background,
            )
            vectors.extend(array.tolist())
        return EmbeddingResult(
            vectors=vectors,
            prompt_tokens=sum(min(n, limit) for n in full_lengths),
            truncated=sum(1 for n in full_lengths if n > limit),
            dimensions=self.dimensions,
            token_counts=full_lengths,
        )

    def _embed_ids_blocking(self, token_lists: list[list[int]], background: bool = False) -> EmbeddingResult:
        import torch

        model = self._model
        prefix, suffix = self._special_prefix, self._special_suffix
        room = self.max_seq_length - len(prefix) - len(suffix)
        truncated = sum(1 for ids in token_lists if len(ids) > room)
        sequences = [prefix + ids[:room] + suffix for ids in token_lists]
        vectors: list[list[float]] = []
        for start in range(0, len(sequences), self.spec.max_batch):
            batch = sequences[start : start + self.spec.max_batch]
            features = _pad_features(batch, model.tokenizer.pad_token_id or 0, self._feature_probe, model.device)

            def forward() -> list[list[float]]:
                with torch.inference_mode():
                    embedding = model(features)["sentence_embedding"]
                    if self.spec.normalize:
                        embedding = torch.nn.functional.normalize(embedding, p=2, dim=1)
                    return embedding.float().cpu().tolist()

            vectors.extend(self._gated(forward, background))
        full_lengths = [len(prefix) + len(ids) + len(suffix) for ids in token_lists]
        return EmbeddingResult(vectors, sum(len(s) for s in sequences), truncated, self.dimensions, token_counts=full_lengths)


def _yield_points(model: Any) -> list[Any]:
    """Where a background batch may yield the cores: before each block of each transformer layer
    (BERT's attention, intermediate, output: three per layer, ~5% of a batch each for MiniLM).
    The layers are the longest ModuleList in the model."""
    import torch

    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
    if not stacks:
        return []
    return [part for layer in max(stacks, key=len) for part in (list(layer.children()) or [layer])]


def _token_layout(model: Any) -> tuple[list[int], list[int], dict[str, Any]]:
    """Where the tokenizer puts its special tokens around a text, and what preprocess() yields.

    Found by probing rather than by tokenizer internals, which differ across transformers
    versions (v5 dropped build_inputs_with_special_tokens from fast tokenizers).
    """
    tokenizer = model.tokenizer
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :], dict(model.preprocess(["a"]))
    raise EngineError("cannot locate the text inside the tokenizer's special tokens")


def _pad_features(sequences: Sequence[list[int]], pad_id: int, probe: dict[str, Any], device: Any) -> dict[str, Any]:
    """The features preprocess() would give for these ids: same keys, right padding."""
    import torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
    tensors = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(input_ids)}
    features: dict[str, Any] = {}
    for key, value in probe.items():
        if isinstance(value, torch.Tensor):
            features[key] = tensors[key].to(device)
        else:
            features[key] = value  # e.g. modality="text"
    return features
