"""CrossEncoderEngine: a reranker (sentence-transformers' CrossEncoder) on the torch worker thread.

A cross-encoder reads the query and one document together and gives one relevance score, so
unlike a bi-encoder nothing is computed per document ahead of time: each (query, document)
pair is a forward pass. The control plane batches the pairs of many requests; this engine
flattens their groups into pairs and runs them `max_batch` at a time, each batch holding the
CPU gate like an embedding batch does (so the hybrid policy interleaves them with decode steps).
"""

from __future__ import annotations

import threading
from typing import Any

import trio

from sage_client.protocol import ModelKind
from sage_daemon.engines.base import (
    EngineError,
    EngineState,
    EngineStats,
    InvalidRequestError,
    NullGate,
    RerankResult,
    StepGate,
)
from sage_daemon.engines.sentence_transformers import SentenceTransformersSpec, TorchWorker, _yield_points, quiet_hf_logs

# As for embeddings (sentence_transformers.CHARS_PER_TOKEN_BOUND): a document is cut to this many
# characters per token the model reads before the tokenizer sees it, so a megabyte-long document
# costs what a max-length one does.
CHARS_PER_TOKEN_BOUND = 32


class CrossEncoderEngine(TorchWorker):
    """A RerankEngine over a local sentence-transformers CrossEncoder folder."""

    kind: ModelKind = "rerank"
    backend = "sentence-transformers"
    local_tokenizer = True

    def __init__(self, spec: SentenceTransformersSpec, gate: StepGate | None = None):
        self.spec = spec
        self.name = spec.name
        self.gate = gate or NullGate()
        self.max_seq_length = 0
        self.device = "cpu"
        self._model: Any = None
        self._tokenizer: Any = None  # a copy for tokenize() on other threads than the worker
        self._tokenizer_lock = threading.Lock()
        self._init_worker()
        self._requests_total = 0
        self._pairs_total = 0
        self._prompt_tokens_total = 0
        self._truncated_total = 0

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
        self.max_seq_length = int(model.max_length or model.tokenizer.model_max_length or 512)
        import copy

        self._tokenizer = await trio.to_thread.run_sync(copy.deepcopy, model.tokenizer)
        self._start_worker(f"rerank-{self.name}")
        self._state, self._detail = EngineState.READY, f"cross-encoder, max {self.max_seq_length} tokens per pair on {self.device}"

    def _load_blocking(self) -> Any:
        quiet_hf_logs()
        import torch
        from sentence_transformers import CrossEncoder

        device = self.spec.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.spec.threads is not None:
            torch.set_num_threads(self.spec.threads)
        self.device = device
        model = CrossEncoder(self.spec.model_path, device=device, local_files_only=True)
        if getattr(model, "num_labels", 1) != 1:
            raise EngineError(f"{self.spec.model_path} is a classifier with {model.num_labels} labels, not a reranker (one relevance score)")
        model.model.eval()
        for part in _yield_points(model.model):
            part.register_forward_pre_hook(self._at_yield_point)
        return model

    def stats(self) -> EngineStats:
        return EngineStats(
            slots_total=1,
            slots_busy=0 if self._jobs.empty() else 1,
            requests_total=self._requests_total,
            prompt_tokens_total=self._prompt_tokens_total,
            extra={"pairs_total": float(self._pairs_total), "truncated_inputs_total": float(self._truncated_total)},
        )

    # -- tokens (POST /tokenize) ----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._loaded_tokenizer())

    def _loaded_tokenizer(self) -> Any:
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise EngineError(f"{self.name} is not loaded")
        return tokenizer

    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        tokenizer = self._loaded_tokenizer()
        with self._tokenizer_lock:
            return list(tokenizer(text, add_special_tokens=add_special, verbose=False)["input_ids"])

    def detokenize(self, token_ids: Any) -> str:
        tokenizer = self._loaded_tokenizer()
        with self._tokenizer_lock:
            return str(tokenizer.decode(list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def token_pieces(self, token_ids: Any) -> list[bytes]:
        tokenizer = self._loaded_tokenizer()
        with self._tokenizer_lock:
            return [str(piece).encode() for piece in tokenizer.convert_ids_to_tokens(list(token_ids))]

    # -- reranking ----------------------------------------------------------------------------

    async def rerank(self, groups: list[tuple[str, list[str]]], background: bool = False) -> list[RerankResult]:
        for index, (query, documents) in enumerate(groups):
            if not isinstance(query, str) or not all(isinstance(d, str) for d in documents):
                raise InvalidRequestError(f"group {index}: the query and every document must be strings", param="documents")
        if not groups:
            return []
        results = await self._run_on_worker(lambda: self._rerank_blocking(groups, background))
        self._requests_total += len(groups)
        return results

    def _rerank_blocking(self, groups: list[tuple[str, list[str]]], background: bool) -> list[RerankResult]:
        model = self._model
        limit = self.max_seq_length
        chars = limit * CHARS_PER_TOKEN_BOUND
        pairs = [(query[:chars], document[:chars]) for query, documents in groups for document in documents]
        lengths = self._pair_lengths(pairs)
        scores: list[float] = []
        for start in range(0, len(pairs), self.spec.max_batch):
            batch = pairs[start : start + self.spec.max_batch]
            array = self._gated(
                # With the model's own activation (a sigmoid for one-label rerankers): scores in
                # [0, 1] as Cohere, Jina, vLLM and Infinity return them (llama-server's are logits).
                lambda: model.predict(batch, batch_size=len(batch), convert_to_numpy=True, show_progress_bar=False),
                background,
            )
            scores.extend(float(x) for x in array.reshape(-1).tolist())
        self._pairs_total += len(pairs)
        out: list[RerankResult] = []
        start = 0
        for _, documents in groups:
            end = start + len(documents)
            mine = lengths[start:end]
            result = RerankResult(scores[start:end], sum(min(n, limit) for n in mine), sum(1 for n in mine if n > limit))
            self._prompt_tokens_total += result.prompt_tokens
            self._truncated_total += result.truncated
            out.append(result)
            start = end
        return out

    def _pair_lengths(self, pairs: list[tuple[str, str]]) -> list[int]:
        """Tokens of each (query, document) pair with the special tokens, before the cut."""
        tokenizer = self._model.tokenizer
        try:
            encoded = tokenizer([q for q, _ in pairs], [d for _, d in pairs], add_special_tokens=True, verbose=False)
        except Exception as exc:
            raise InvalidRequestError(f"documents cannot be tokenized: {type(exc).__name__}: {exc}", param="documents") from exc
        return [len(ids) for ids in encoded["input_ids"]]

