"""Per-sequence sampling from llama.cpp's logits with the compiled `sample_logits` operator.

llama.cpp's own sampler chain builds (and for softmax and top-p sorts) a candidate entry per
vocabulary token for every draw: on SmolLM2 (49,152 tokens, ~10 ms decode steps) 0.4 ms for a
plain temperature, 0.5-3.9 ms with top_p 0.9 (`benchmarks/sampling.py`). This applies the same
steps in the same order (grammar mask, logit bias, presence/frequency penalties, top-k, top-p,
min-p, temperature, draw) on a copy of the row, looking only at the tokens near the top. The
grammar mask (constrained decoding: `grammar.TokenMatcher`) is per sequence: one decode batch
mixes constrained and free sequences.
"""

from __future__ import annotations

import ctypes
import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import llama_cpp
import msgspec
import numpy as np

from cython_ops import sample_logits

from .base import InvalidSamplingError, SamplingParams

if TYPE_CHECKING:
    from .grammar import TokenMatcher

# The ranges of OpenAI's API (and of every door: http/schemas.py, jobs/spec.py): the engine takes
# no wider ones, so a value that slipped past a door cannot turn the float32 row into inf - inf.
PENALTY_RANGE = (-2.0, 2.0)
LOGIT_BIAS_RANGE = (-100.0, 100.0)


def _check_float(value: object, param: str, low: float = -math.inf, high: float = math.inf) -> None:
    try:
        ok = not isinstance(value, bool) and math.isfinite(value) and low <= value <= high  # type: ignore[arg-type, operator]
    except (TypeError, OverflowError):  # not a number, or an int beyond a double
        ok = False
    if not ok:
        where = f" in [{low:g}, {high:g}]" if math.isfinite(low) else ""
        raise InvalidSamplingError(f"{param} must be a finite number{where}; got {value!r}", param)


def _check_int(value: object, param: str, low: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
        at_least = f" >= {low}" if low is not None else ""
        raise InvalidSamplingError(f"{param} must be an integer{at_least}; got {value!r}", param)
    return value


def check_sampling(params: SamplingParams, n_vocab: int) -> SamplingParams:
    """The settings a model of `n_vocab` tokens can take, in the form the sampler passes to C.

    Raises InvalidSamplingError (a client's 400 naming the field) for a value no model can take;
    returns `params` with the ones that mean the same as a smaller value brought down to it: a
    top_k of 0, below 0 or at least the vocabulary keeps every token (0: off, so it fits the C int
    of `sample_logits` whatever the request said), logprobs beyond the vocabulary list all of it.
    The seed is any integer (Python's Random takes it whole). Runs once per request, in `prepare`.
    """
    _check_int(params.max_tokens, "max_tokens", 1)
    _check_float(params.temperature, "temperature")  # <= 0: greedy
    _check_float(params.top_p, "top_p", 0.0, 1.0)
    _check_float(params.min_p, "min_p", 0.0, 1.0)
    _check_float(params.presence_penalty, "presence_penalty", *PENALTY_RANGE)
    _check_float(params.frequency_penalty, "frequency_penalty", *PENALTY_RANGE)
    if params.seed is not None:
        _check_int(params.seed, "seed")
    for token, bias in params.logit_bias:
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < n_vocab:
            raise InvalidSamplingError(f"logit_bias token ids must be in [0, {n_vocab}) for this model; got {token}", "logit_bias")
        _check_float(bias, "logit_bias", *LOGIT_BIAS_RANGE)
    if not all(isinstance(stop, str) for stop in params.stop):
        raise InvalidSamplingError("stop must be strings", "stop")
    top_k = _check_int(params.top_k, "top_k")
    logprobs = params.logprobs if params.logprobs is None else min(_check_int(params.logprobs, "logprobs", 0), n_vocab)
    top_k = top_k if 0 < top_k < n_vocab else 0
    if top_k == params.top_k and logprobs == params.logprobs:
        return params
    return msgspec.structs.replace(params, top_k=top_k, logprobs=logprobs)


class Sampler:
    """One sequence's sampling state: `sample()` picks the next token and counts it for the penalties."""

    def __init__(self, params: SamplingParams, n_vocab: int, eog_tokens: Sequence[int] = (), matcher: TokenMatcher | None = None):
        self._params = params
        self.matcher = matcher  # the sequence's grammar; its mask must be computed before pick() (the loop does it during the decode)
        # As check_sampling, again here where the value crosses into C (one compare per request).
        self._top_k = params.top_k if 0 < params.top_k < n_vocab else 0
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
        matcher = self.matcher
        if matcher is not None:
            matcher.apply_mask(row)
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
        token: int = sample_logits(row, p.temperature, self._top_k, p.top_p, p.min_p, u)
        if matcher is not None and not matcher.accept(token):
            # Only when no allowed token could be drawn (e.g. ignore_eos where the grammar allows only the end).
            raise RuntimeError(f"the output constraint refused token {token}: {matcher.error() or 'no allowed token left'}")
        if self._counts is not None:
            if self._counts[token] == 0:
                self._seen.append(token)
            self._counts[token] += 1
        return token
