"""Per-sequence llama.cpp sampler chains built from SamplingParams (sampling stays in C)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import llama_cpp

from .base import SamplingParams


class SamplerChain:
    """Owns one `llama_sampler` chain; `sample()` picks and accepts the next token."""

    def __init__(self, params: SamplingParams, n_vocab: int, penalty_window: int, eog_tokens: Sequence[int] = ()):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if not chain:
            raise MemoryError("llama_sampler_chain_init failed")
        self._chain = chain
        try:
            self._build(params, n_vocab, penalty_window, eog_tokens)
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: object) -> None:
        if not sampler:
            raise ValueError("llama.cpp rejected a sampler parameter")
        # The chain takes ownership: freeing the chain frees the samplers.
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, p: SamplingParams, n_vocab: int, penalty_window: int, eog_tokens: Sequence[int]) -> None:
        if p.ignore_eos and eog_tokens:
            biases = (llama_cpp.llama_logit_bias * len(eog_tokens))()
            for i, token in enumerate(eog_tokens):
                biases[i].token = token
                biases[i].bias = float("-inf")
            self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(eog_tokens), biases))
        if p.presence_penalty != 0.0 or p.frequency_penalty != 0.0:
            # Over the whole generation so far, as the OpenAI API does (llama.cpp clamps -1 to 0 = off,
            # so the window is given explicitly: a slot's context bounds the generation).
            self._add(llama_cpp.llama_sampler_init_penalties(n_vocab, penalty_window, 1.0, p.frequency_penalty, p.presence_penalty))
        if p.temperature <= 0.0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(p.temperature))
        seed = p.seed if p.seed is not None else random.getrandbits(32)
        self._add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> int:
        """Sample from the logits of output `batch_index` of the last decode (and accept it)."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index))

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

