"""Facts about this host: cores, memory, GPUs, WSL2, which engines are installed (vLLM, llama.cpp
and whether its build can offload to a GPU, sentence-transformers). Config can override them (for tests).
Cheap: packages are found with importlib.util.find_spec, never imported here."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Literal

from sage_client.protocol import GpuInfo, NodeInfo
from sage_daemon.core.config import NodesConfig

__all__ = ["GpuInfo", "NodeInfo", "current_gpus", "detect_node", "is_wsl2_host", "llamacpp_build"]


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                values[name] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except OSError:
        pass
    return values


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cpu_count() -> int:
    """Cores this process may run on (cgroup/affinity aware), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def is_wsl2_host(proc_version: Path = Path("/proc/version")) -> bool:
    try:
        text = proc_version.read_text().lower()
    except OSError:
        return False
    return "microsoft" in text and ("wsl2" in text or "microsoft-standard" in text)


def _gpus_from_nvml() -> list[GpuInfo] | None:
    try:
        import pynvml  # from nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: NVMLError_LibraryNotFound and friends
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(GpuInfo(index, name.decode() if isinstance(name, bytes) else name, int(memory.total), int(memory.free)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _gpus_from_nvidia_smi() -> list[GpuInfo] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.strip().splitlines():
        index, name, total, free = (field.strip() for field in line.split(","))
        gpus.append(GpuInfo(int(index), name, int(float(total)) * 2**20, int(float(free)) * 2**20))
    return gpus


@functools.lru_cache(maxsize=1)
def _vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


@functools.lru_cache(maxsize=1)
def _sentence_transformers_importable() -> bool:
    return importlib.util.find_spec("sentence_transformers") is not None


_GPU_BACKEND_LIBS = ("libggml-cuda", "libggml-hip", "libggml-vulkan", "libggml-metal", "libggml-sycl", "ggml-cuda")


@functools.lru_cache(maxsize=1)
def llamacpp_build() -> Literal["gpu", "cpu", "no"]:
    """Whether llama-cpp-python is installed and can offload to a GPU (llama_supports_gpu_offload()).

    Without importing it where that can be avoided (a daemon serving remote models never loads
    llama.cpp): its wheel ships one shared library per ggml backend (lib/libggml-cuda.so for CUDA).
    Where the library layout is unknown, or llama_cpp is imported already, llama.cpp is asked."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return "no"
    if "llama_cpp" not in sys.modules:
        try:
            names = os.listdir(Path(spec.origin).parent / "lib")
        except OSError:
            names = []
        if any(n.startswith(_GPU_BACKEND_LIBS) for n in names):
            return "gpu"
        if any(n.startswith("libggml") for n in names):
            return "cpu"
    try:
        import llama_cpp
    except Exception:  # installed but broken (a missing CUDA runtime): as good as not installed
        return "no"
    return "gpu" if llama_cpp.llama_supports_gpu_offload() else "cpu"


def _detect_gpus() -> tuple[list[GpuInfo], str]:
    for source, finder in (("nvml", _gpus_from_nvml), ("nvidia-smi", _gpus_from_nvidia_smi)):
        found = finder()
        if found is not None:
            return found, source
    return [], "none"


def current_gpus(node: NodeInfo) -> list[GpuInfo]:
    """The node's GPUs with their free memory read again now (pretend GPUs as configured): a model
    loaded later fits itself to what other models and processes left."""
    if node.gpu_source in ("nvml", "nvidia-smi"):
        gpus, _ = _detect_gpus()
        if gpus:
            return gpus
    return list(node.gpus)


def detect_node(overrides: NodesConfig = NodesConfig()) -> NodeInfo:
    """This host's facts, with the config's overrides applied and listed."""
    notes: list[str] = []
    memory = _meminfo()

    if overrides.pretend_gpus >= 0:
        size = int(overrides.pretend_gpu_memory_gb * 2**30)
        gpus = [GpuInfo(i, "pretend GPU (config nodes.pretend_gpus)", size, size) for i in range(overrides.pretend_gpus)]
        gpu_source = "config"
        notes.append(f"gpus: {overrides.pretend_gpus} from config nodes.pretend_gpus")
    else:
        gpus, gpu_source = _detect_gpus()

    wsl2 = is_wsl2_host()
    if overrides.wsl2 != "auto":
        wsl2 = overrides.wsl2 == "yes"
        notes.append(f"wsl2: {overrides.wsl2} from config nodes.wsl2")

    vllm = _vllm_importable()
    if overrides.vllm != "auto":
        vllm = overrides.vllm == "yes"
        notes.append(f"vllm: {overrides.vllm} from config nodes.vllm")

    llamacpp = llamacpp_build() if overrides.llamacpp == "auto" else overrides.llamacpp
    if overrides.llamacpp != "auto":
        notes.append(f"llamacpp: {overrides.llamacpp} from config nodes.llamacpp")
    missing = [name for name, present in (("llamacpp", llamacpp != "no"), ("sentence-transformers", _sentence_transformers_importable()), ("vllm", vllm)) if not present]

    return NodeInfo(
        hostname=socket.gethostname(),
        cpu_model=cpu_model_name(),
        cpu_count=cpu_count(),
        memory_total_bytes=memory.get("MemTotal", 0),
        memory_available_bytes=memory.get("MemAvailable", 0),
        gpus=gpus,
        gpu_source=gpu_source,
        is_wsl2=wsl2,
        vllm_available=vllm,
        overrides=notes,
        llamacpp_gpu=llamacpp == "gpu",
        engines_missing=missing,
    )
