"""VllmEngine's child-process management, against a REAL OpenAI-compatible child started the way vLLM
is (own process group, port from SagePorts, CUDA_VISIBLE_DEVICES): tests/engines/openai_child.py
serving SmolLM2 through llama.cpp. vLLM itself needs a GPU; only its command line is checked here."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import msgspec
import pytest
import trio

from sage_daemon.engines.base import EngineError, EngineState, GenerationRequest, LLMEngine, SamplingParams
from sage_daemon.engines.vllm import VllmEngine, VllmSpec, child_environment, vllm_command
from tests.engines.conftest import REPO, child_command

# Flags of `python -m vllm.entrypoints.openai.api_server`, as documented by vLLM:
# --host, --port, --api-key: FrontendArgs in vllm/entrypoints/openai/cli_args.py (vllm-project/vllm);
# --model, --served-model-name, --max-model-len, --max-num-seqs, --gpu-memory-utilization, --dtype:
# EngineArgs in vllm/engine/arg_utils.py (fields model, served_model_name, max_model_len, max_num_seqs,
# gpu_memory_utilization, dtype, exposed as --kebab-case), listed in the usage block of
# https://docs.vllm.ai/en/latest/models/engine_args.html ("--dtype {auto,half,float16,bfloat16,float,float32}").
DOCUMENTED_VLLM_FLAGS = {
    "--host", "--port", "--api-key",
    "--model", "--served-model-name", "--max-model-len", "--max-num-seqs", "--gpu-memory-utilization", "--dtype",
}
DOCUMENTED_DTYPES = {"auto", "half", "float16", "bfloat16", "float", "float32"}

SAMPLING = SamplingParams(max_tokens=16, temperature=0.0)


def test_vllm_command_uses_only_documented_flags() -> None:
    spec = VllmSpec(name="qwen", model="Qwen/Qwen2.5-0.5B-Instruct", max_model_len=2048, max_num_seqs=8,
                    gpu_memory_utilization=0.8, api_key="k", extra_args=["--enforce-eager"])
    command = vllm_command(spec, 8907)
    assert command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    args = command[3 : len(command) - len(spec.extra_args)]
    flags = dict(zip(args[::2], args[1::2]))
    assert set(flags) <= DOCUMENTED_VLLM_FLAGS, set(flags) - DOCUMENTED_VLLM_FLAGS
    assert flags == {
        "--model": "Qwen/Qwen2.5-0.5B-Instruct", "--served-model-name": "qwen", "--host": "127.0.0.1", "--port": "8907",
        "--max-model-len": "2048", "--max-num-seqs": "8", "--gpu-memory-utilization": "0.8", "--dtype": "auto", "--api-key": "k",
    }
    assert flags["--dtype"] in DOCUMENTED_DTYPES
    assert command[-1] == "--enforce-eager"  # extra args from config come last, untouched


def test_child_environment_pins_the_gpu() -> None:
    assert child_environment(VllmSpec(name="m", model="m", gpu_index=1))["CUDA_VISIBLE_DEVICES"] == "1"
    assert child_environment(VllmSpec(name="m", model="m", env={"CUDA_VISIBLE_DEVICES": "7"}))["CUDA_VISIBLE_DEVICES"] == "7"


def child_spec(**changes: object) -> VllmSpec:
    spec = VllmSpec(
        name="smol", model="unused-by-the-test-child", command=child_command("{port}"), gpu_index=0,
        prefer_recommended_port=False, env={"PYTHONPATH": str(REPO)}, health_timeout_s=60, stop_timeout_s=5,
        restart_backoff_initial_s=1.0, max_restarts=3,
    )
    return msgspec.structs.replace(spec, **changes)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def child_env_var(pid: int, name: str) -> str | None:
    for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        key, _, value = entry.partition(b"=")
        if key.decode() == name:
            return value.decode()
    return None


async def generate_text(engine: VllmEngine, prompt: str = "Once upon a time") -> tuple[list[str], object]:
    chunks = [c async for c in engine.generate(GenerationRequest("r", SAMPLING, prompt=prompt))]
    return [c.text for c in chunks if c.text], chunks[-1]


async def test_child_that_exits_early_fails_load_with_its_output(nursery: trio.Nursery) -> None:
    script = "import sys; print('starting'); print('RuntimeError: No CUDA GPUs are available', file=sys.stderr); sys.exit(3)"
    engine = VllmEngine(child_spec(command=[sys.executable, "-c", script]), nursery=nursery)
    with pytest.raises(EngineError) as info:
        await engine.load()
    message = str(info.value)
    assert "exited with code 3 before it was healthy" in message and "No CUDA GPUs are available" in message
    health = engine.health()
    assert health.state is EngineState.ERROR and "code 3" in health.detail


async def test_serves_streams_and_leaves_no_orphans(nursery: trio.Nursery) -> None:
    engine = VllmEngine(child_spec(), nursery=nursery)
    await engine.load()
    pgid = engine.child_pid
    assert pgid is not None and os.getpgid(pgid) == pgid  # its own process group
    assert isinstance(engine, LLMEngine) and engine.health().state is EngineState.READY
    assert child_env_var(pgid, "CUDA_VISIBLE_DEVICES") == "0"
    assert engine.base_url is not None and 8900 <= int(engine.base_url.rsplit(":", 1)[1]) <= 8999
    texts, last = await generate_text(engine)
    assert len(texts) >= 3  # streamed, not one blob
    assert last.finish_reason == "length" and last.completion_tokens == 16 and last.prompt_tokens > 0  # type: ignore[attr-defined]
    await engine.unload()
    assert group_gone(pgid)
    assert engine.health().state is EngineState.STOPPED
    with pytest.raises(EngineError, match="not serving"):
        await generate_text(engine)


@pytest.mark.slow
async def test_killed_child_fails_requests_then_restarts() -> None:
    async with trio.open_nursery() as engine_nursery:
        engine = VllmEngine(child_spec(), nursery=engine_nursery)
        await engine.load()
        first_pgid = engine.child_pid
        assert first_pgid is not None

        request = GenerationRequest("long", SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True), prompt="Count: 1, 2, 3,")
        received = 0
        with pytest.raises(EngineError) as info:
            async for _chunk in engine.generate(request):
                received += 1
                if received == 2:
                    os.killpg(first_pgid, signal.SIGKILL)
        assert "exit code -9" in str(info.value)
        health = engine.health()
        assert health.state is EngineState.ERROR and "exited with code -9" in health.detail
        with trio.fail_after(2):
            while "restart 1 of 3" not in engine.health().detail:
                await trio.sleep(0.01)

        with trio.fail_after(45):
            while engine.health().state is not EngineState.READY:
                await trio.sleep(0.1)
        second_pgid = engine.child_pid
        assert second_pgid is not None and second_pgid != first_pgid and group_gone(first_pgid)
        texts, last = await generate_text(engine)
        assert texts and last.finish_reason == "length"  # type: ignore[attr-defined]
        assert engine.stats().extra["restarts_total"] == 1.0

        engine_nursery.cancel_scope.cancel()  # the daemon shutting down: no unload() call
    assert group_gone(second_pgid)


async def test_restarts_stop_after_the_limit(nursery: trio.Nursery) -> None:
    engine = VllmEngine(child_spec(restart_backoff_initial_s=0.05, max_restarts=2), nursery=nursery)
    await engine.load()
    pgid = engine.child_pid
    assert pgid is not None
    # From now on every restart dies at once, as a vLLM with a broken GPU would.
    engine.spec = msgspec.structs.replace(engine.spec, command=[sys.executable, "-c", "import sys; sys.exit(5)"])
    os.killpg(pgid, signal.SIGKILL)
    with trio.fail_after(20):
        while "gave up" not in engine.health().detail:
            await trio.sleep(0.05)
    health = engine.health()
    assert health.state is EngineState.ERROR and "gave up after 2 restarts in a row" in health.detail
    assert "exited with code 5" in health.detail
    assert group_gone(pgid)
    await engine.unload()


async def test_port_choice_is_wsl2_aware(nursery: trio.Nursery) -> None:
    from sage_daemon.core.ports import SagePorts, is_port_free

    on_wsl = VllmEngine(VllmSpec(name="m", model="m"), nursery=nursery, is_wsl2=True)
    port = on_wsl._choose_port()
    if is_port_free("127.0.0.1", SagePorts.LLM_WSL_FALLBACK):
        assert port == SagePorts.LLM_WSL_FALLBACK  # 8901, not 8001, on WSL2
    else:
        assert port in SagePorts.ENGINE_RANGE
    pinned = VllmEngine(VllmSpec(name="m", model="m", port=8123), nursery=nursery)
    assert pinned._choose_port() == 8123


async def test_capabilities_and_prepare_go_through_the_proxy(nursery: trio.Nursery) -> None:
    from sage_daemon.core.errors import ContextOverflowError

    engine = VllmEngine(child_spec(max_model_len=64), nursery=nursery)
    request = GenerationRequest("r", SAMPLING, prompt="hi")
    with pytest.raises(EngineError, match="not serving"):
        engine.prepare(request)
    await engine.load()
    try:
        assert isinstance(engine, LLMEngine) and (engine.n_ctx, engine.parallel) == (64, 16)
        assert engine.accepts_token_ids and not engine.supports_dimensions and engine.max_seq_length == 64
        assert await trio.to_thread.run_sync(engine.prepare, request) is request  # text: vLLM counts its tokens
        with pytest.raises(ContextOverflowError):
            engine.prepare(GenerationRequest("t", SAMPLING, prompt_tokens=tuple(range(50))))  # 50 + 16 > 64
    finally:
        await engine.unload()
