"""How many layers of a GGUF model llama.cpp can offload to one GPU: a pure function, no I/O.

Inputs: the GPU's free memory (an NVML reading), the model's facts (`ModelFacts`: from
`gguf_info.model_facts`, or written as a table in tests), the context (`n_ctx` per sequence x
`parallel` sequences: the engine's one unified KV cache), the KV cache types, the micro-batch.

The estimate follows Ollama's `llm/memory.go` (`EstimateGPULayers`) and `fs/ggml` `GraphSize`:
each repeating layer costs its tensors' bytes plus its share of the KV cache; the output layer
(`output.weight` + `output_norm`, or a copy of `token_embd` when tied) goes to the GPU only once
every repeating layer is there; the input embeddings stay on the CPU (llama.cpp keeps them there);
a compute buffer sized by Ollama's llama-family graph formula (the partial-offload one while a layer
stays on the CPU), where the KQ score matrix (n_kv x n_ubatch x n_head f32) counts only without
flash attention. The headroom is llama.cpp's own: its `--fit` (`llama_params_fit`) leaves
`--fit-target` = 1 GiB free on each device, measured after its CUDA context exists; an NVML reading
taken before that context does not show it, so Ollama's CUDA minimum (457 MiB) is reserved too.
llama.cpp measures with a dry-run allocation; a pure estimate cannot, so it errs on the safe side
(sliding-window layers are counted at the full context).

Layer counting is llama.cpp's: a model with n_layer blocks has n_layer + 1 offloadable layers
(the last is the output layer); `n_gpu_layers = k` puts the LAST k blocks on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CUDA_OVERHEAD_BYTES",
    "FIT_TARGET_BYTES",
    "KV_CACHE_TYPES",
    "CacheType",
    "GpuFit",
    "ModelFacts",
    "compute_buffer_bytes",
    "fit_gpu_layers",
    "flash_attn_for",
    "kv_cache_bytes_per_token",
]

GiB = 2**30
MiB = 2**20
FIT_TARGET_BYTES = 1024 * MiB  # llama.cpp common.h: fit_params_target (what --fit leaves free per device)
CUDA_OVERHEAD_BYTES = 457 * MiB  # Ollama discover: CUDA's minimum memory (context, cuBLAS workspace)

CacheType = Literal["f16", "q8_0", "q4_0"]
# name -> (GGML type id for llama_context_params.type_k/type_v, bytes per element: block bytes / block size)
KV_CACHE_TYPES: dict[str, tuple[int, float]] = {
    "f16": (1, 2.0),  # GGML_TYPE_F16
    "q8_0": (8, 34 / 32),  # GGML_TYPE_Q8_0: 32 values in 34 bytes
    "q4_0": (2, 18 / 32),  # GGML_TYPE_Q4_0: 32 values in 18 bytes
}


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs to know about a GGUF model."""

    layer_bytes: tuple[int, ...]  # tensor bytes of each repeating block (blk.N.*), in order
    output_bytes: int  # output.weight + output_norm (a copy of token_embd when the output is tied)
    input_bytes: int  # token_embd and other non-block tensors that stay on the CPU
    n_embd: int
    n_head: int
    n_head_kv: int  # the largest over the layers
    head_dim_k: int
    head_dim_v: int
    n_vocab: int

    @property
    def n_layer(self) -> int:
        return len(self.layer_bytes)

    @property
    def weights_bytes(self) -> int:
        return sum(self.layer_bytes) + self.output_bytes + self.input_bytes

    @classmethod
    def uniform(cls, n_layer: int, layer_bytes: int, **rest: int) -> ModelFacts:
        return cls(layer_bytes=(layer_bytes,) * n_layer, **rest)


@dataclass(frozen=True)
class GpuFit:
    n_gpu_layers: int  # for llama_model_params.n_gpu_layers: 0 .. total_layers
    total_layers: int  # n_layer + 1 (the output layer)
    gpu_bytes: int  # weights, KV cache and compute buffer on the GPU (headroom not included)
    cpu_bytes: int  # weights and KV cache left in host memory
    kv_bytes: int  # the whole KV cache, wherever it lives
    compute_bytes: int  # the GPU compute buffer (0 with nothing offloaded)
    reason: str


def flash_attn_for(cache_type_v: str, flash_attn: bool | None = None) -> bool | None:
    """llama.cpp refuses a quantized V cache without flash attention: turn it on for one.
    None leaves it to llama.cpp ("auto": on where the device supports it, CUDA and CPU do)."""
    if cache_type_v != "f16":
        return True
    return flash_attn


def kv_cache_bytes_per_token(facts: ModelFacts, cache_type_k: str = "f16", cache_type_v: str = "f16") -> float:
    """One layer's K and V bytes for one token (cell)."""
    k = facts.head_dim_k * facts.n_head_kv * KV_CACHE_TYPES[cache_type_k][1]
    v = facts.head_dim_v * facts.n_head_kv * KV_CACHE_TYPES[cache_type_v][1]
    return k + v


def compute_buffer_bytes(facts: ModelFacts, n_ctx_total: int, n_ubatch: int, *, full: bool, flash_attn: bool) -> int:
    """Ollama's llama-family graph size (fs/ggml GraphSize), with the f32 KQ scores only without flash attention."""
    batch, ctx, embd, heads, vocab = n_ubatch, n_ctx_total, facts.n_embd, facts.n_head, facts.n_vocab
    scores = 0 if flash_attn else 4 * batch * ctx * heads
    logits = 4 * batch * (embd + vocab)
    if full:
        return max(4 * batch * (1 + 4 * embd + ctx) + scores, logits)
    attention = 4 * batch * (1 + embd + max(ctx, embd)) + embd * embd * 9 // 16 + scores + 4 * ctx * facts.head_dim_k * facts.n_head_kv
    return 4 * batch * embd + max(attention, logits + embd * vocab * 105 // 128)


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def fit_gpu_layers(
    facts: ModelFacts,
    *,
    free_bytes: int,
    total_bytes: int = 0,
    gpu_index: int = 0,
    n_ctx: int,
    parallel: int = 1,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    flash_attn: bool | None = None,
    requested: int | Literal["auto"] = "auto",
    n_ubatch: int = 512,
    headroom_bytes: int = FIT_TARGET_BYTES + CUDA_OVERHEAD_BYTES,
) -> GpuFit:
    """Layers to offload to GPU `gpu_index` with `free_bytes` free: as many as fit ("auto"), all (-1), none (0) or k."""
    n_layer = facts.n_layer
    total_layers = n_layer + 1
    ctx_total = n_ctx * parallel  # the engine's unified cache: parallel x n_ctx cells
    ubatch = max(n_ubatch, parallel)
    fa = flash_attn_for(cache_type_v, flash_attn) is not False
    kv_layer = int(kv_cache_bytes_per_token(facts, cache_type_k, cache_type_v) * ctx_total)
    kv_total = kv_layer * n_layer
    block = [b + kv_layer for b in facts.layer_bytes]  # offloaded from the last block backwards
    host_total = facts.weights_bytes + kv_total
    budget = free_bytes - headroom_bytes
    gpu = f"GPU {gpu_index}"

    def placed(layers: int) -> tuple[int, int, int]:
        """(gpu bytes, cpu bytes, compute bytes) with `layers` layers offloaded."""
        if layers <= 0:
            return 0, host_total, 0
        blocks = min(layers, n_layer)
        on_gpu = sum(block[n_layer - blocks :]) + (facts.output_bytes if layers > n_layer else 0)
        compute = compute_buffer_bytes(facts, ctx_total, ubatch, full=layers > n_layer, flash_attn=fa)
        return on_gpu + compute, host_total - on_gpu, compute

    def result(layers: int, reason: str) -> GpuFit:
        on_gpu, on_cpu, compute = placed(layers)
        return GpuFit(layers, total_layers, on_gpu, on_cpu, kv_total, compute, reason)

    free_text = f"{free_bytes / GiB:.1f} of {_gib(total_bytes)} free" if total_bytes else f"{_gib(free_bytes)} free"
    if requested == 0:
        return result(0, "n_gpu_layers = 0: all layers on the CPU")
    if requested != "auto":
        layers = total_layers if requested < 0 or requested > total_layers else requested
        on_gpu = placed(layers)[0]
        over = f"; the estimate exceeds the {free_text} minus {_gib(headroom_bytes)} headroom" if on_gpu > budget else ""
        return result(layers, f"{gpu}: {layers}/{total_layers} layers, {_gib(on_gpu)} (n_gpu_layers = {requested}{over})")
    if placed(total_layers)[0] <= budget:
        return result(total_layers, f"{gpu}: {total_layers}/{total_layers} layers, {_gib(placed(total_layers)[0])}")
    layers = 0
    while layers < n_layer and placed(layers + 1)[0] <= budget:
        layers += 1
    if layers == 0:
        return result(0, f"{gpu} has {free_text}: all layers on the CPU (one layer needs {_gib(placed(1)[0] + headroom_bytes)} with headroom)")
    on_gpu, on_cpu, _ = placed(layers)
    return result(layers, f"{gpu}: {layers}/{total_layers} layers, {_gib(on_gpu)} ({free_text}); {_gib(on_cpu)} on the CPU")


def facts_from_tensors(
    tensors: Sequence[tuple[str, int]], *, n_layer: int, n_embd: int, n_head: int, n_head_kv: int, head_dim_k: int, head_dim_v: int, n_vocab: int
) -> ModelFacts:
    """ModelFacts from (tensor name, bytes) pairs named as in GGUF: blk.N.*, output*, token_embd*."""
    layers = [0] * n_layer
    output = input_ = 0
    token_embd = 0
    has_output = False
    for name, nbytes in tensors:
        if name.startswith("blk."):
            index = name.split(".", 2)[1]
            if index.isdigit() and int(index) < n_layer:
                layers[int(index)] += nbytes
                continue
            input_ += nbytes
        elif name.startswith("output"):  # output.weight, output_norm.weight (and their biases)
            output += nbytes
            has_output = has_output or name.startswith("output.")
        else:
            if name.startswith("token_embd."):
                token_embd += nbytes
            input_ += nbytes
    if not has_output:  # tied embeddings: llama.cpp loads token_embd a second time as the output
        output += token_embd
    return ModelFacts(tuple(layers), output, input_, n_embd, n_head, n_head_kv, head_dim_k, head_dim_v, n_vocab)
