"""SentenceTransformersEngine: batch embeddings with sentence-transformers on one thread the engine owns.

All model work (encode, tokenize, forward on token ids) runs on a single dedicated worker thread
fed by a queue: torch's intra-op thread pool is then used by one caller at a time, and trio
tasks only wait on an event. An exception inside the model kills the worker on purpose (the
torch state after a failure is not trusted): pending and later calls fail with EngineError and
health() says why, until the pool reloads the engine. An input the engine refuses (a token id
outside the vocabulary, a text the tokenizer cannot read) is not such a failure: its call
raises InvalidRequestError and the worker goes on, so the control plane can fail that input's
request alone and run the others batched with it again.

Inputs longer than the model can read are cut to a prefix before anything tokenizes them (see
`_cap_texts`): a megabytes-long text costs what a max_seq_length one does.
"""

from __future__ import annotations

import copy
import math
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal, TypeVar

import msgspec
import trio

from sage_client.protocol import ModelKind
from sage_daemon.engines.base import (
    EmbeddingResult,
    EngineError,
    EngineHealth,
    EngineState,
    EngineStats,
    InvalidRequestError,
    NullGate,
    StepGate,
)

T = TypeVar("T")


class SentenceTransformersSpec(msgspec.Struct, frozen=True):
    """How to build a SentenceTransformersEngine (the pool fills it from `[[models]]`)."""

    name: str
    model_path: str  # a local folder; nothing downloads
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int | None = None  # torch intra-op threads; None = leave torch's setting alone
    normalize: bool = True
    max_batch: int = 64  # texts per forward pass (and per StepGate hold)
    # Sizes a Matryoshka-trained model's vectors may be cut to (`dimensions` in a request); empty: none.
    matryoshka_dims: tuple[int, ...] = ()


_ID_FEATURES = ("input_ids", "attention_mask", "token_type_ids")  # what embed_tokens can build

# Characters a text may keep per token the model reads, before the tokenizer sees it. English
# runs at ~4-5 characters per WordPiece/BPE token; 32 leaves room for long words, URLs and
# numbers. When it is not enough (a run of 100-character words is one [UNK] each), the cut is
# widened until it holds more tokens than the model reads: the result never depends on it.
CHARS_PER_TOKEN_BOUND = 32


class DimensionsNotSupportedError(InvalidRequestError):
    """A `dimensions` request to a model that was not trained for truncation: a client's 400."""

    def __init__(self, message: str):
        super().__init__(message, param="dimensions")


def quiet_hf_logs() -> None:
    """A daemon's log is no place for Hugging Face progress bars ("Loading weights: 100%|███|").

    The network is not turned off here (HF_HUB_OFFLINE): the same process pulls models from the
    Hub (`sagectl pull`). Engines load from local folders with local_files_only=True instead."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call] # transformers' own bars only, not huggingface_hub's
    except Exception:  # noqa: BLE001 - an older transformers without it: bars in the log, nothing worse
        pass


def truncate_dimensions(vectors: list[list[float]], dimensions: int) -> list[list[float]]:
    """Matryoshka-style truncation: keep the first `dimensions` components, renormalise to unit length."""
    import numpy as np

    head = np.asarray(vectors, dtype=np.float64)[:, :dimensions]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    cut: list[list[float]] = (head / norms).tolist()
    return cut


class _Job(Generic[T]):
    """One call handed to the worker thread; completion is signalled on the caller's trio loop."""

    __slots__ = ("fn", "token", "done", "result", "error", "refused", "abandoned")

    def __init__(self, fn: Callable[[], T], token: trio.lowlevel.TrioToken):
        self.fn = fn
        self.token = token
        self.done = trio.Event()
        self.result: T | None = None
        self.error: str | None = None  # the worker died running it
        self.refused: InvalidRequestError | None = None  # its input was wrong; the worker is fine
        self.abandoned = False  # the caller was cancelled: skip it if not started

    def finish(self) -> None:
        try:
            self.token.run_sync_soon(self.done.set)
        except trio.RunFinishedError:
            pass  # the caller's trio run is gone; nobody waits


class _StopWorker:
    pass


class TorchWorker:
    """One thread that runs every model call of a torch engine, fed by a queue (see the module's
    docstring), and the CPU gate held around each batch. SentenceTransformersEngine and
    CrossEncoderEngine (engines/cross_encoder.py) are this plus their model's calls."""

    name: str
    gate: StepGate
    _model: Any
    _tokenizer: Any

    def _init_worker(self) -> None:
        self._state = EngineState.STOPPED
        self._detail = ""
        self._jobs: queue.SimpleQueue[_Job[Any] | _StopWorker] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()  # orders "worker died" against new submissions
        self._worker_dead: str | None = None
        self._background_step = False  # the worker is running a background batch (read by _at_yield_point)

    def _start_worker(self, thread_name: str) -> None:
        self._jobs = queue.SimpleQueue()
        self._worker_dead = None
        self._worker = threading.Thread(target=self._worker_loop, name=thread_name, daemon=True)
        self._worker.start()

    async def unload(self) -> None:
        worker = self._worker
        if worker is not None:
            self._jobs.put(_StopWorker())
            await trio.to_thread.run_sync(worker.join)
            self._fail_pending("the engine was unloaded")
        self._worker = None
        self._worker_dead = None
        self._model = None
        self._tokenizer = None
        self._state, self._detail = EngineState.STOPPED, ""

    def health(self) -> EngineHealth:
        if self._worker_dead is not None:
            return EngineHealth(EngineState.ERROR, False, self._worker_dead)
        return EngineHealth(self._state, self._state is EngineState.READY, self._detail)

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
            except InvalidRequestError as exc:  # raised before the model ran: nothing to distrust
                job.refused = exc
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
        if job.refused is not None:
            raise job.refused
        if job.error is not None:
            raise EngineError(f"{self.name}: {job.error}")
        return job.result  # type: ignore[return-value]

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


class SentenceTransformersEngine(TorchWorker):
    """An EmbeddingEngine over a local sentence-transformers model."""

    kind: ModelKind = "embedding"  # the Protocol's type (a mutable attribute is invariant)
    backend = "sentence-transformers"
    local_tokenizer = True

    def __init__(self, spec: SentenceTransformersSpec, gate: StepGate | None = None):
        self.spec = spec
        self.name = spec.name
        self.gate: StepGate = gate or NullGate()
        self.supports_dimensions = bool(spec.matryoshka_dims)
        self.accepts_token_ids = False  # known once loaded: the model's inputs must be ids and masks only
        self.dimensions = 0
        self.max_seq_length = 0
        self._tokenizer: Any = None  # a copy for tokenize(), whose callers are on other threads than the worker
        self._tokenizer_lock = threading.Lock()
        self.device = "cpu"
        self._model: Any = None
        self._special_prefix: list[int] = []  # special tokens the tokenizer puts around a text
        self._special_suffix: list[int] = []
        self._feature_probe: dict[str, Any] = {}  # the keys the model's preprocess() produces
        self._init_worker()
        self._requests_total = 0
        self._prompt_tokens_total = 0
        self._truncated_total = 0

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
        self.accepts_token_ids = not [k for k, v in self._feature_probe.items() if hasattr(v, "shape") and k not in _ID_FEATURES]
        self._tokenizer = await trio.to_thread.run_sync(copy.deepcopy, model.tokenizer)
        self._start_worker(f"embed-{self.name}")
        self._state, self._detail = EngineState.READY, f"{self.dimensions} dims, max {self.max_seq_length} tokens on {self.device}"

    def _load_blocking(self) -> Any:
        quiet_hf_logs()
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

    def stats(self) -> EngineStats:
        return EngineStats(
            slots_total=1,
            slots_busy=0 if self._jobs.empty() else 1,
            requests_total=self._requests_total,
            prompt_tokens_total=self._prompt_tokens_total,
            extra={"truncated_inputs_total": float(self._truncated_total)},
        )

    # -- embedding ---------------------------------------------------------------------------

    async def embed(self, texts: list[str], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        """Embed `texts` (inputs longer than max_seq_length are cut, and counted in `truncated`)."""
        self._check_dimensions(dimensions)
        if not texts:
            return EmbeddingResult([], 0, 0, self.dimensions)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidRequestError(f"input[{index}] must be a string, not {type(text).__name__}", param="input")
        result = await self._run_on_worker(lambda: self._embed_texts_blocking(list(texts), background))
        return self._finish(result, dimensions)

    async def embed_tokens(self, token_lists: list[list[int]], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        """Embed pre-tokenized inputs (OpenAI's token-array input).

        The ids (as from `tokenize()`, without special tokens) are fed to the model directly,
        wrapped in the tokenizer's special tokens: no decode/re-encode round trip. An id outside
        the vocabulary raises InvalidRequestError naming the input (the ids are checked on the
        worker, off the trio thread: a list may hold millions).
        """
        self._check_dimensions(dimensions)
        if not token_lists:
            return EmbeddingResult([], 0, 0, self.dimensions)
        if self._model is None:
            raise EngineError(f"{self.name} is not loaded")
        if not self.accepts_token_ids:
            unsupported = [k for k, v in self._feature_probe.items() if hasattr(v, "shape") and k not in _ID_FEATURES]
            raise InvalidRequestError(f"token-id input is not supported for model {self.name} (its inputs include {unsupported[0]!r})", param="input")
        result = await self._run_on_worker(lambda: self._embed_ids_blocking([list(ids) for ids in token_lists], background))
        return self._finish(result, dimensions)

    @property
    def vocab_size(self) -> int:
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise EngineError(f"{self.name} is not loaded")
        return len(tokenizer)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise EngineError(f"{self.name} is not loaded")
        with self._tokenizer_lock:
            return str(tokenizer.decode(list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def token_pieces(self, token_ids: Sequence[int]) -> list[bytes]:
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise EngineError(f"{self.name} is not loaded")
        with self._tokenizer_lock:
            return [str(piece).encode() for piece in tokenizer.convert_ids_to_tokens(list(token_ids))]

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        """Token ids of `text`, by default without special tokens (what OpenAI's token-array input carries). Blocking.

        On the engine's own copy of the tokenizer, under a lock: a Hugging Face fast tokenizer
        must not be used by two threads at once (a call changes its truncation settings), and
        the worker's copy is busy with batches this call should not wait behind.
        """
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise EngineError(f"{self.name} is not loaded")
        with self._tokenizer_lock:
            return list(tokenizer(text, add_special_tokens=add_special, verbose=False)["input_ids"])

    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None or dimensions == self.dimensions:
            return
        if not self.supports_dimensions:
            raise DimensionsNotSupportedError(f"model {self.name} does not support the dimensions parameter (its vectors have {self.dimensions})")
        allowed = sorted(d for d in self.spec.matryoshka_dims if d < self.dimensions)
        if dimensions not in allowed:
            sizes = ", ".join(str(d) for d in [*allowed, self.dimensions])
            raise DimensionsNotSupportedError(f"model {self.name} gives vectors of {sizes} dimensions, not {dimensions}")

    def _finish(self, result: EmbeddingResult, dimensions: int | None) -> EmbeddingResult:
        self._requests_total += 1
        self._prompt_tokens_total += result.prompt_tokens
        self._truncated_total += result.truncated
        if dimensions is not None and dimensions != self.dimensions:
            result.vectors = truncate_dimensions(result.vectors, dimensions)
            result.dimensions = dimensions
        return result

    def _count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text with the special tokens, untruncated. A text the tokenizer cannot
        read raises InvalidRequestError naming it; a tokenizer that fails on each text alone too
        is broken, and its error kills the worker."""
        tokenizer = self._model.tokenizer
        try:
            return [len(ids) for ids in tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]]
        except Exception as batch_error:
            for index, text in enumerate(texts):
                try:
                    tokenizer([text], add_special_tokens=True, verbose=False)
                except Exception as exc:
                    raise InvalidRequestError(f"input[{index}] cannot be tokenized: {type(exc).__name__}: {exc}", param="input") from exc
            raise batch_error

    def _cap_texts(self, texts: list[str]) -> tuple[list[str], list[int]]:
        """Each text cut to a prefix that still holds more tokens than the model reads, and the
        token count of what is kept (with the special tokens).

        The model reads only max_seq_length tokens, but a tokenizer reads all of its input: one
        7.8 MB text cost ~10 s and ~550 MB to tokenize twice (counting, then encode). The cut
        is at whitespace, so the tokens before it are those of the whole text, and the encoder
        sees the same first max_seq_length tokens as before. A cut text's count is therefore a
        lower bound of the whole text's, always above max_seq_length: `truncated` and the tokens
        billed (min(count, max_seq_length)) come out as for the whole text.
        """
        limit = self.max_seq_length
        if not limit:
            return texts, self._count_tokens(texts)
        chars = limit * CHARS_PER_TOKEN_BOUND
        kept = [_cut_at_whitespace(text, chars) for text in texts]
        counts = self._count_tokens(kept)
        for index, text in enumerate(texts):
            widened = chars
            while counts[index] <= limit and len(kept[index]) < len(text):
                # Too few tokens in the cut (very long words): it may drop some the model would read.
                widened *= 4
                kept[index] = _cut_at_whitespace(text, widened)
                counts[index] = self._count_tokens([kept[index]])[0]
        return kept, counts

    def _embed_texts_blocking(self, texts: list[str], background: bool = False) -> EmbeddingResult:
        model = self._model
        limit = self.max_seq_length
        texts, full_lengths = self._cap_texts(texts)
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
        vocab = len(model.tokenizer)
        for index, ids in enumerate(token_lists):
            bad = next((i for i in ids if not (isinstance(i, int) and 0 <= i < vocab)), None)
            if bad is not None:
                raise InvalidRequestError(f"input[{index}]: token id {bad} is outside this model's vocabulary (0..{vocab - 1})", param="input")
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
                    vectors: list[list[float]] = embedding.float().cpu().tolist()
                    return vectors

            vectors.extend(self._gated(forward, background))
        full_lengths = [len(prefix) + len(ids) + len(suffix) for ids in token_lists]
        return EmbeddingResult(vectors, sum(len(s) for s in sequences), truncated, self.dimensions, token_counts=full_lengths)


def _cut_at_whitespace(text: str, chars: int) -> str:
    """`text` if it has at most `chars` characters, else a prefix of about that length ending
    before whitespace (so no word is split), or exactly `chars` long if its second half has none."""
    if len(text) <= chars:
        return text
    piece = text[:chars]
    space = max(piece.rfind(c) for c in " \n\t\r")
    return piece[:space] if space > chars // 2 else piece


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
