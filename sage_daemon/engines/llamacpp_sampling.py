"""Per-sequence sampling from llama.cpp's logits with the compiled `sample_logits` operator.

llama.cpp's own sampler chain builds (and for softmax and top-p sorts) a candidate entry per
vocabulary token for every draw: on SmolLM2 (49,152 tokens, ~10 ms decode steps) 0.4 ms for a
plain temperature, 0.5-3.9 ms with top_p 0.9 (`benchmarks/sampling.py`). This applies the same
steps in the same order (logit bias, presence/frequency penalties, top-k, top-p, min-p, temperature, draw) on a
copy of the row, looking only at the tokens near the top.
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Sequence

import llama_cpp
import numpy as np

from cython_ops import sample_logits

from .base import SamplingParams


class Sampler:
    """One sequence's sampling state: `sample()` picks the next token and counts it for the penalties."""

    def __init__(self, params: SamplingParams, n_vocab: int, eog_tokens: Sequence[int] = ()):
        self._params = params
        self._row = np.empty(n_vocab, dtype=np.float32)
        self._row_address = self._row.ctypes.data
        self._row_bytes = self._row.nbytes
        # ignore_eos: the end-of-generation tokens can never be drawn.
        self._suppressed = np.asarray(eog_tokens, dtype=np.int64) if params.ignore_eos and eog_tokens else None
        self._bias_ids = np.asarray([t for t, _ in params.logit_bias], dtype=np.int64) if params.logit_bias else None
        self._bias = np.asarray([b for _, b in params.logit_bias], dtype=np.float32) if params.logit_bias else None
        penalized = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self._counts = np.zeros(n_vocab, dtype=np.float32) if penalized else None
        self._seen: list[int] = []
        self._seen_ids = np.zeros(0, dtype=np.int64)
        self._rng = random.Random(params.seed if params.seed is not None else random.getrandbits(32)) if params.temperature > 0.0 else None
        # logprobs: the row's log-softmax, taken before any sampling setting changes the row
        # (what vLLM returns by default: the model's own distribution).
        self._logprobs = np.empty(n_vocab, dtype=np.float32) if params.logprobs is not None else None

    def sample(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> int:
        """Sample from the logits of output `batch_index` of the last decode."""
        logits = llama_cpp.llama_get_logits_ith(ctx, batch_index)
        if not logits:
            raise RuntimeError(f"llama.cpp has no logits for batch index {batch_index}")
        ctypes.memmove(self._row_address, logits, self._row_bytes)
        return self.pick(self._row)

    def _log_softmax(self, row: np.ndarray) -> None:
        assert self._logprobs is not None
        out = self._logprobs
        np.subtract(row, row.max(), out=out)
        out -= np.float32(np.log(np.exp(out).sum(dtype=np.float64)))

    def logprobs_of(self, token: int) -> tuple[float, list[tuple[int, float]]]:
        """After `pick()` (or `sample()`): the token's log-probability, and the `logprobs` likeliest (id, log-probability), best first."""
        assert self._logprobs is not None and self._params.logprobs is not None
        out, k = self._logprobs, min(self._params.logprobs, len(self._logprobs))
        top: list[tuple[int, float]] = []
        if k > 0:
            # Only tokens near the top can be among the k likeliest: sort those, not the vocabulary
            # (argpartition over 49,152 tokens costs ~0.5 ms a token); any band is exact once it holds k.
            for width in (8.0, 16.0, 32.0, np.inf):
                ids = np.flatnonzero(out >= -width)
                if len(ids) >= k:
                    break
            ids = ids[np.argsort(-out[ids], kind="stable")[:k]]
            top = [(int(i), float(out[i])) for i in ids]
        return float(out[token]), top

    def pick(self, row: np.ndarray) -> int:
        """Pick from one row of float32 logits (changed in place), and count the token."""
        p = self._params
        if self._logprobs is not None:
            self._log_softmax(row)
        if self._bias_ids is not None:
            row[self._bias_ids] += self._bias
        if self._suppressed is not None:
            row[self._suppressed] = -np.inf
        if self._counts is not None and self._seen:
            if len(self._seen_ids) != len(self._seen):
                self._seen_ids = np.asarray(self._seen, dtype=np.int64)
            # As OpenAI (and llama.cpp's penalties sampler) define them: count x frequency, plus presence once.
            row[self._seen_ids] -= self._counts[self._seen_ids] * p.frequency_penalty + p.presence_penalty
        u = self._rng.random() if self._rng is not None else 0.0
        token = sample_logits(row, p.temperature, p.top_k, p.top_p, p.min_p, u)
        if self._counts is not None:
            if self._counts[token] == 0:
                self._seen.append(token)
            self._counts[token] += 1
        return token
