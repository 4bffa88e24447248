"""The control plane with fake engines (scheduling logic only; the real engines are tested end to end
elsewhere): admission into slots, batching, 429, deadlines, cancellation, policy switch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from sage_client.protocol import NodeInfo
from sage_daemon.control.api import DeadlineExceededError, InvalidRequestError, Priority, QueueFullError, RequestMeta
from sage_daemon.control.plane import ControlPlane
from sage_daemon.core.config import Config, ControlConfig, ModelConfig, ModelSources
from sage_daemon.engines.base import EmbeddingResult, EngineHealth, EngineState, EngineStats, GenerationChunk, GenerationRequest
from sage_daemon.engines.pool import EnginePool, Placement

NODE = NodeInfo("h", "cpu", 2, 8 * 2**30, 6 * 2**30, [], "none", False, False)


class FakeLLM:
    """An LLMEngine (engines/base.py) that yields numbered tokens slowly."""

    name = "llm"
    kind = "llm"
    backend = "fake"
    n_ctx = 512

    def __init__(self, parallel: int):
        self.parallel = parallel
        self.live = 0
        self.peak = 0
        self.requests: list[GenerationRequest] = []

    async def load(self) -> None: ...
    async def unload(self) -> None: ...

    def health(self) -> EngineHealth:
        return EngineHealth(EngineState.READY, True)

    def stats(self) -> EngineStats:
        return EngineStats(slots_total=self.parallel, slots_busy=self.live)

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        return request

    def tokenize(self, text: str) -> list[int]:
        return [len(w) for w in text.split()]

    def has_chat_template(self) -> bool:
        return True

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        self.live += 1
        self.peak = max(self.peak, self.live)
        try:
            for i in range(request.sampling.max_tokens):
                await trio.sleep(0.1)
                yield GenerationChunk(text=f"t{i} ", token_ids=(i,))
            yield GenerationChunk(finish_reason="length", prompt_tokens=3, completion_tokens=request.sampling.max_tokens)
        finally:
            self.live -= 1


class FakeEmbedder:
    """An EmbeddingEngine (engines/base.py) whose vectors are [len(text), 1]."""

    name = "emb"
    kind = "embedding"
    backend = "fake"
    max_seq_length = 128
    dimensions = 2
    supports_dimensions = False
    accepts_token_ids = False

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def load(self) -> None: ...
    async def unload(self) -> None: ...

    def health(self) -> EngineHealth:
        return EngineHealth(EngineState.READY, True)

    def stats(self) -> EngineStats:
        return EngineStats()

    async def embed(self, texts: list[str], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        self.batches.append(len(texts))
        await trio.sleep(0.05)
        if "BAD" in texts:  # an input the model refuses (as a tokenizer refuses ids outside its vocabulary)
            raise InvalidRequestError("input 'BAD' cannot be embedded", param="input")
        return EmbeddingResult([[float(len(t)), 1.0] for t in texts], sum(len(t) for t in texts), dimensions=2, token_counts=[len(t) for t in texts])

    async def embed_tokens(self, token_lists: list[list[int]], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        raise AssertionError("the plane checks accepts_token_ids first")


async def make_plane(nursery: trio.Nursery, parallel: int = 2, **control: Any) -> tuple[ControlPlane, FakeLLM, FakeEmbedder]:
    llm, embedder = FakeLLM(parallel), FakeEmbedder()
    models = [ModelConfig(name="llm", kind="llm", parallel=parallel, sources=ModelSources(llamacpp="/x")), ModelConfig(name="emb", kind="embedding")]

    def factory(model: ModelConfig, placement: Placement) -> Any:
        return llm if model.kind == "llm" else embedder

    pool = EnginePool(Config(models=models), NODE, factory)
    plane = ControlPlane(pool, ControlConfig(**control))
    await nursery.start(plane.run)
    return plane, llm, embedder


def req(n: int = 3) -> GenerationRequest:
    from sage_daemon.engines.base import SamplingParams

    return GenerationRequest("r", SamplingParams(max_tokens=n), prompt="hi")


async def test_admission_never_exceeds_the_engine_slots(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    plane, llm, _ = await make_plane(nursery, parallel=2)
    texts: list[str] = []

    async def one(i: int) -> None:
        stream = await plane.generate("llm", "completion", req(), RequestMeta(f"r{i}"))
        text, last = await stream.collect()
        texts.append(text)
        assert last.finish_reason == "length"

    async with trio.open_nursery() as inner:
        for i in range(6):
            inner.start_soon(one, i)
    assert llm.peak == 2 and texts == ["t0 t1 t2 "] * 6
    assert plane.running["llm"] == 0 and plane.waiting == []


async def test_background_generations_reach_the_engine_marked_as_preemptible(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    plane, llm, _ = await make_plane(nursery, parallel=2)
    for priority in (Priority.BACKGROUND, Priority.NORMAL):
        stream = await plane.generate("llm", "completion", req(1), RequestMeta(f"r-{priority.name}", priority))
        await stream.collect()
    assert [r.background for r in llm.requests] == [True, False]


async def test_full_queue_is_a_429_with_retry_after(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    plane, _, _ = await make_plane(nursery, parallel=1, max_queue=2)
    # prepare() runs on a worker thread: the first request is admitted meanwhile, the next two wait.
    streams = [await plane.generate("llm", "completion", req(50), RequestMeta(f"r{i}")) for i in range(3)]
    with pytest.raises(QueueFullError) as info:
        await plane.generate("llm", "completion", req(), RequestMeta("overflow"))
    assert info.value.status == 429 and info.value.retry_after_s >= 1 and "max_queue 2" in info.value.message
    for stream in streams:
        await stream.aclose()
    assert plane.waiting == []


async def test_cancelled_waiting_request_leaves_the_queue(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    plane, llm, _ = await make_plane(nursery, parallel=1)
    first = await plane.generate("llm", "completion", req(100), RequestMeta("first"))
    await first.__anext__()  # admitted, generating
    second = await plane.generate("llm", "completion", req(), RequestMeta("second"))
    with trio.move_on_after(1):
        await second.__anext__()  # waits for the slot, then gives up
    await second.aclose()
    assert [t.id for t in plane.waiting] == []
    await first.aclose()  # frees the slot at once
    assert plane.running["llm"] == 0 and llm.live == 0
    third = await plane.generate("llm", "completion", req(1), RequestMeta("third"))
    assert (await third.collect())[1].finish_reason == "length"


async def test_deadline_expires_a_waiting_request(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    plane, _, _ = await make_plane(nursery, parallel=1)
    busy = await plane.generate("llm", "completion", req(100), RequestMeta("busy"))
    await busy.__anext__()
    late = await plane.generate("llm", "completion", req(), RequestMeta("late", deadline_s=0.5))
    with pytest.raises(DeadlineExceededError, match="past its deadline of 500 ms"):
        await late.__anext__()
    await busy.aclose()


async def test_concurrent_embeddings_are_served_in_batches(nursery: trio.Nursery) -> None:
    plane, _, embedder = await make_plane(nursery, max_batch_wait_ms=20)
    results: dict[int, Any] = {}

    async def one(i: int) -> None:
        results[i] = await plane.embed("emb", ["x" * i], RequestMeta(f"e{i}"))

    async with trio.open_nursery() as inner:
        for i in range(1, 33):
            inner.start_soon(one, i)
    assert sum(embedder.batches) == 32 and max(embedder.batches) > 1 and len(embedder.batches) < 32
    assert all(results[i].vectors == [[float(i), 1.0]] and results[i].prompt_tokens == i for i in results)


async def test_one_bad_input_fails_its_own_request_not_the_batch(nursery: trio.Nursery) -> None:
    plane, _, embedder = await make_plane(nursery, max_batch_wait_ms=20)
    outcomes: dict[str, Any] = {}

    async def one(name: str, texts: list[str]) -> None:
        try:
            outcomes[name] = await plane.embed("emb", texts, RequestMeta(name))
        except InvalidRequestError as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as inner:
        for i in range(6):
            inner.start_soon(one, f"good{i}", ["x" * (i + 1)])
        inner.start_soon(one, "bad", ["ok", "BAD"])
    assert max(embedder.batches) > 1  # the bad request was batched with others...
    assert isinstance(outcomes["bad"], InvalidRequestError) and outcomes["bad"].param == "input"
    for i in range(6):  # ...and they were served all the same
        assert outcomes[f"good{i}"].vectors == [[float(i + 1), 1.0]]
    assert plane.waiting == [] and plane.embedding_in_flight["emb"] == 0


async def test_fifo_serves_embeddings_one_request_per_call(nursery: trio.Nursery) -> None:
    plane, _, embedder = await make_plane(nursery, policy="fifo")
    async with trio.open_nursery() as inner:
        for i in range(8):
            inner.start_soon(plane.embed, "emb", ["a", "b"], RequestMeta(f"e{i}"))
    assert embedder.batches == [2] * 8
    plane.set_policy("hybrid")
    assert plane.policy.name == "hybrid"
    with pytest.raises(InvalidRequestError, match="unknown policy"):
        plane.set_policy("random")


async def test_wrong_kind_of_model_is_a_400(nursery: trio.Nursery) -> None:
    plane, _, _ = await make_plane(nursery)
    with pytest.raises(InvalidRequestError, match="embedding model"):
        await plane.generate("emb", "chat", req(), RequestMeta("x"))
    with pytest.raises(InvalidRequestError, match="not an embedding model"):
        await plane.embed("llm", ["x"], RequestMeta("y", priority=Priority.HIGH))


async def test_stop_accepting_fails_waiting_work(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    plane, _, _ = await make_plane(nursery, parallel=1)
    busy = await plane.generate("llm", "completion", req(100), RequestMeta("busy"))
    await busy.__anext__()
    waiting = await plane.generate("llm", "completion", req(), RequestMeta("waiting"))
    plane.stop_accepting()
    from sage_daemon.control.api import ShuttingDownError

    with pytest.raises(ShuttingDownError):
        await waiting.__anext__()
    with pytest.raises(ShuttingDownError):
        await plane.generate("llm", "completion", req(), RequestMeta("new"))
    await busy.aclose()


def test_background_embedding_batches_wait_for_an_interactive_first_token() -> None:
    import threading
    import time

    from sage_daemon.control import gate as gate_module
    from sage_daemon.control.gate import CpuGate

    gate = CpuGate()
    order: list[str] = []

    def batch(name: str, background: bool) -> None:
        gate.acquire("embedding", background)
        order.append(name)
        gate.release()

    gate.set_interactive_pending(1)
    held = threading.Thread(target=batch, args=("background", True))
    held.start()
    batch("interactive", False)  # not held
    time.sleep(0.05)
    assert order == ["interactive"]
    gate.set_interactive_pending(0)  # the first token arrived
    held.join(2)
    assert order == ["interactive", "background"]
    # ...and never held longer than the bound, whatever happens to the chat.
    gate.set_interactive_pending(1)
    started = time.monotonic()
    batch("late", True)
    assert gate_module.BACKGROUND_HOLD_S - 0.05 <= time.monotonic() - started < gate_module.BACKGROUND_HOLD_S + 1.0


def test_a_background_batch_that_yielded_stays_out_until_the_first_token() -> None:
    import threading
    import time

    from sage_daemon.control.gate import CpuGate

    gate = CpuGate()
    order: list[str] = []
    gate.acquire("embedding", background=True)  # a background batch holds the cores
    gate.set_interactive_pending(1)  # a chat is admitted

    def chat_steps() -> None:
        for name in ("prefill", "decode"):  # its first text needs two steps
            gate.acquire("llm")
            order.append(name)
            gate.release()
        gate.set_interactive_pending(0)

    chat = threading.Thread(target=chat_steps)
    chat.start()
    while not gate._waiting["llm"]:
        time.sleep(0.001)
    gate.yield_to_interactive("embedding")  # at the batch's next layer block
    order.append("batch resumes")
    gate.release()
    chat.join(2)
    assert order == ["prefill", "decode", "batch resumes"]  # not prefill, batch, decode


def test_the_cpu_gate_counts_how_long_each_engine_kind_held_the_cores() -> None:
    import time

    from sage_daemon.control.gate import CpuGate

    gate = CpuGate()
    gate.acquire("embedding")
    time.sleep(0.05)
    gate.release()
    gate.acquire("llm")
    time.sleep(0.02)
    gate.release()
    gate.release()  # a stray release adds nothing
    assert 0.05 <= gate.held_s["embedding"] < 0.5
    assert 0.02 <= gate.held_s["llm"] < 0.45
    assert gate.steps == {"llm": 1, "embedding": 1}


def test_outside_work_pauses_while_a_chat_waits_for_its_first_token_and_no_longer() -> None:
    """A pull calls the gate's pause between chunks: it returns at once when no chat waits, as soon
    as the waiting chat's first token is out, after max_s under a steady stream of chats, and when
    the pull is cancelled."""
    import threading
    import time

    from sage_daemon.control.gate import CpuGate

    gate = CpuGate()
    assert gate.pause_for_interactive(max_s=5) < 0.05  # nobody waits: no pause

    gate.set_interactive_pending(1)
    threading.Timer(0.15, gate.set_interactive_pending, args=(0,)).start()
    waited = gate.pause_for_interactive(max_s=5)
    assert 0.1 <= waited < 1.0, waited  # until the first token, not the bound

    gate.set_interactive_pending(1)
    waited = gate.pause_for_interactive(max_s=0.2)
    assert 0.19 <= waited < 1.0, waited  # chats keep coming: the work goes on after max_s

    cancelled = threading.Event()
    threading.Timer(0.1, cancelled.set).start()
    start = time.monotonic()
    gate.pause_for_interactive(cancelled, max_s=5)
    assert time.monotonic() - start < 1.0  # a cancelled pull is not held
    gate.set_interactive_pending(0)
