#!/usr/bin/env bash
# Install SAGE daemon with the CPU engines and the shipped models into ./.venv (idempotent).
#   EXTRAS=cpu,test bash scripts/install.sh     # which extras (default: cpu)
#   VENV=/path/to/venv bash scripts/install.sh  # where
#   LLAMA_CUDA=auto|on|off bash scripts/install.sh  # llama.cpp with CUDA: auto = where nvcc and a GPU are found
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-cpu}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
# torch first, pinned to the CPU build: otherwise sentence-transformers pulls a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
fi
# llama-cpp-python compiles llama.cpp (about 4 minutes). Without OpenMP: the daemon runs several
# engine threads (a second model, torch for embeddings), and once a second thread has an OpenMP
# team libgomp stops spinning at llama.cpp's barriers: decoding falls to ~0.7x (docs/BENCHMARKS.md).
# Not from pip's wheel cache, which may hold a build with OpenMP.
# Without AMX: -march=native turns AMX on where the CPU lists it, but a virtual machine may not
# enable its tile state, and then the first prompt-sized matrix product dies with SIGILL
# (seen on Firecracker guests). So: no -march=native; the x86 features /proc/cpuinfo lists, AMX left out.
# With CUDA where nvcc (PATH or /usr/local/cuda/bin) and an NVIDIA GPU are found: layers offload to the GPU
# (n_gpu_layers in [[models]]); the CPU backend is built too and keeps the flags below.
LLAMA_SPEC="llama-cpp-python>=0.3.16"
LLAMA_CUDA="${LLAMA_CUDA:-auto}"
find_nvcc() {
    command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; } || true
}
has_gpu() {
    { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } || [ -e /dev/nvidia0 ]
}
NVCC=""
if [ "$LLAMA_CUDA" = on ] || { [ "$LLAMA_CUDA" = auto ] && has_gpu; }; then
    # auto: a CUDA toolkit alone (seen on GPU-less build hosts, some without cuBLAS) is not enough.
    NVCC="$(find_nvcc)"
    if [ -z "$NVCC" ] && [ "$LLAMA_CUDA" = on ]; then
        echo "LLAMA_CUDA=on but nvcc is not found (PATH, /usr/local/cuda/bin)" >&2
        exit 1
    fi
fi
llama_cmake_args() {
    local args="-DGGML_OPENMP=OFF"
    if [ -n "$NVCC" ]; then
        args="$args -DGGML_CUDA=on -DCMAKE_CUDA_COMPILER=$NVCC"
    fi
    if [ "$(uname -m)" = x86_64 ] && [ -r /proc/cpuinfo ]; then
        local flags
        flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
        args="$args -DGGML_NATIVE=OFF"
        local pair
        for pair in avx:AVX avx2:AVX2 avx_vnni:AVX_VNNI fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 \
                    avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
            if [[ "$flags" == *" ${pair%%:*} "* ]]; then
                args="$args -DGGML_${pair#*:}=ON"
            fi
        done
    fi
    echo "$args ${CMAKE_ARGS:-}"
}
if [[ ",$EXTRAS," == *",cpu,"* ]]; then
    if [ -n "$NVCC" ]; then
        echo "building llama-cpp-python with CUDA ($NVCC)"
    fi
    if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
        if ! CMAKE_ARGS="$(llama_cmake_args)" "$VENV/bin/python" -m pip install --quiet --no-cache-dir "$LLAMA_SPEC"; then
            if [ -z "$NVCC" ] || [ "$LLAMA_CUDA" = on ]; then
                exit 1
            fi
            echo "the CUDA build of llama-cpp-python failed (see above); building it for the CPU instead" >&2
            NVCC=""
            CMAKE_ARGS="$(llama_cmake_args)" "$VENV/bin/python" -m pip install --quiet --no-cache-dir "$LLAMA_SPEC"
        fi
    elif "$VENV/bin/python" -c "
import sys, llama_cpp
info = llama_cpp.llama_print_system_info().decode()
wrong = 'OPENMP = 1' in info or 'AMX_INT8 = 1' in info
wrong = wrong or (sys.argv[1] == 'cuda' and not llama_cpp.llama_supports_gpu_offload())  # a CPU-only build, nvcc here now
sys.exit(not wrong)" "${NVCC:+cuda}"; then
        CMAKE_ARGS="$(llama_cmake_args)" "$VENV/bin/python" -m pip install --quiet --no-cache-dir --force-reinstall --no-deps "$LLAMA_SPEC"
    fi
fi
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
gpu="$("$VENV/bin/python" -c "import llama_cpp; print('GPU offload' if llama_cpp.llama_supports_gpu_offload() else 'CPU only')" 2>/dev/null || echo "not installed")"
echo "installed into $VENV ($("$VENV/bin/sage-daemon" --version); llama.cpp: $gpu)"
