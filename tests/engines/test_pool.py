"""Engine pool lifecycle with fake engines (allowed here: this is lifecycle logic, not inference):
placement and CPU fallback, load on demand, keep-alive, eviction, death and restart."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from sage_client.protocol import GpuInfo, NodeInfo
from sage_daemon.core.config import Config, EnginesConfig, ModelConfig, ModelSources
from sage_daemon.core.errors import EngineUnavailableError, ModelNotFoundError
from sage_daemon.engines.base import EngineHealth, EngineState, EngineStats
from sage_daemon.engines.pool import EnginePool, Placement, choose_placement


def node(gpus: int = 0, wsl2: bool = False, vllm: bool = False, free_gb: float = 20) -> NodeInfo:
    gpu_list = [GpuInfo(i, "test GPU", int(24 * 2**30), int(free_gb * 2**30)) for i in range(gpus)]
    return NodeInfo("h", "cpu", 2, 8 * 2**30, 6 * 2**30, gpu_list, "config", wsl2, vllm)


LLM = ModelConfig(name="chat", kind="llm", sources=ModelSources(llamacpp="/m.gguf", vllm="org/m"))
EMB = ModelConfig(name="emb", kind="embedding", sources=ModelSources(sentence_transformers="/e"))


@pytest.mark.parametrize(
    ("facts", "backend", "reason_part"),
    [
        (node(gpus=1, vllm=True), "vllm", "vLLM installed"),
        (node(gpus=0, vllm=True), "llamacpp", "no GPU found"),
        (node(gpus=1, vllm=False), "llamacpp", "vLLM is not installed"),
        (node(gpus=1, vllm=True, wsl2=True), "llamacpp", "WSL2 host"),
        (node(gpus=1, vllm=True, free_gb=0.5), "llamacpp", "0.5 GiB free"),
    ],
)
def test_auto_placement_falls_back_to_cpu_and_says_why(facts: NodeInfo, backend: str, reason_part: str) -> None:
    placement = choose_placement(LLM, facts, allow_vllm_on_wsl=False, vllm_min_free_gpu_gb=2)
    assert placement.backend == backend and reason_part in placement.reason
    if backend == "llamacpp":
        assert placement.reason.startswith("CPU fallback to llama.cpp") and placement.device == "cpu"


def test_wsl2_can_be_allowed_and_embeddings_follow_the_gpu() -> None:
    assert choose_placement(LLM, node(gpus=1, vllm=True, wsl2=True), allow_vllm_on_wsl=True, vllm_min_free_gpu_gb=2).backend == "vllm"
    assert choose_placement(EMB, node(gpus=2), False, 2).device == "cuda:0"
    assert choose_placement(EMB, node(), False, 2).device == "cpu"


class FakeEngine:
    """An LLMEngine (engines/base.py) for lifecycle tests: it never generates."""

    kind = "llm"
    backend = "fake"
    n_ctx = 512
    parallel = 8

    def has_chat_template(self) -> bool:
        return True

    def __init__(self, name: str, log: list[str]):
        self.name = name
        self.log = log
        self.state = EngineState.STOPPED

    async def load(self) -> None:
        await trio.sleep(0.01)
        self.state = EngineState.READY
        self.log.append(f"load {self.name}")

    async def unload(self) -> None:
        self.state = EngineState.STOPPED
        self.log.append(f"unload {self.name}")

    def health(self) -> EngineHealth:
        return EngineHealth(self.state, self.state == EngineState.READY, "thread died" if self.state == EngineState.ERROR else "")

    def stats(self) -> EngineStats:
        return EngineStats(slots_total=8)


def make_pool(models: list[ModelConfig], **engines: Any) -> tuple[EnginePool, list[str], dict[str, FakeEngine]]:
    log: list[str] = []
    made: dict[str, FakeEngine] = {}

    def factory(model: ModelConfig, placement: Placement) -> Any:
        made[model.name] = FakeEngine(model.name, log)
        return made[model.name]

    config = Config(models=models, engines=EnginesConfig(**engines))
    return EnginePool(config, node(), factory), log, made


def model(name: str, keep: float = 300.0) -> ModelConfig:
    return msgspec.structs.replace(LLM, name=name, keep_alive_s=keep)


async def test_load_on_first_use_once_even_when_concurrent() -> None:
    pool, log, _ = make_pool([model("a")])
    assert pool.info("a").state == "stopped"

    async def use() -> None:
        async with pool.use("a"):
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(use)
    assert log == ["load a"] and pool.info("a").state == "ready"
    with pytest.raises(ModelNotFoundError, match="serves: a"):
        pool.slot("nope")


async def test_keep_alive_expires_idle_models(autojump_clock: trio.testing.MockClock) -> None:
    pool, log, _ = make_pool([model("a", keep=10), model("b", keep=-1), model("c", keep=0)])
    async with pool.use("a"):
        pass
    async with pool.use("b"):
        pass
    async with pool.use("c"):
        pass
    assert "unload c" in log  # keep_alive 0: unloaded right after the request
    await trio.sleep(5)
    await pool.supervise_once()
    assert pool.info("a").state == "ready"
    await trio.sleep(6)
    await pool.supervise_once()
    assert pool.info("a").state == "stopped" and pool.info("b").state == "ready"  # negative: forever
    async with pool.use("a", keep_alive_s=100):  # per-request keep-alive wins
        pass
    await trio.sleep(50)
    await pool.supervise_once()
    assert pool.info("a").state == "ready"


async def test_eviction_of_least_recently_used_idle_model(autojump_clock: trio.testing.MockClock) -> None:
    pool, log, _ = make_pool([model("a"), model("b")], max_loaded_models=1)
    async with pool.use("a"):
        pass
    async with pool.use("b"):
        pass
    assert log == ["load a", "unload a", "load b"]
    # A busy model is not evicted: the load waits until it goes idle.
    order: list[str] = []

    async def hold_b() -> None:
        async with pool.use("b"):
            await trio.sleep(3)
            order.append("b done")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold_b)
        await trio.sleep(0.1)
        async with pool.use("a"):
            order.append("a loaded")
    assert order == ["b done", "a loaded"]


async def test_eviction_gives_up_with_a_clear_error(autojump_clock: trio.testing.MockClock) -> None:
    pool, _, _ = make_pool([model("a"), model("b")], max_loaded_models=1)
    async with pool.use("a"):
        with pytest.raises(EngineUnavailableError, match="every loaded model is busy"):
            await pool.ensure_loaded("b")


async def test_dead_engine_is_marked_and_restarted_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    pool, log, made = make_pool([model("a")], restart_backoff_s=2)
    await pool.load("a")
    made["a"].state = EngineState.ERROR
    await pool.supervise_once()
    info = pool.info("a")
    assert info.state == "error" and "engine died: thread died" in info.reason
    assert pool.health_reasons() == ["model a: engine died: thread died"]
    with pytest.raises(EngineUnavailableError, match="next restart in"):
        await pool.ensure_loaded("a")
    await trio.sleep(2.1)
    await pool.supervise_once()
    assert pool.info("a").state == "ready" and log.count("load a") == 2
    assert pool.health_reasons() == []


async def test_load_failure_is_an_error_state_with_the_cause() -> None:
    def factory(model: ModelConfig, placement: Placement) -> Any:
        raise FileNotFoundError("no such GGUF")

    pool = EnginePool(Config(models=[model("a")]), node(), factory)
    with pytest.raises(EngineUnavailableError, match="could not be loaded: no such GGUF"):
        await pool.ensure_loaded("a")
    assert pool.info("a").state == "error" and "no such GGUF" in pool.info("a").reason
