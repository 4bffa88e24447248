"""Facts about a GGUF file from its header, metadata and tensor infos, without reading the weights.

Our own reader of the documented format (ggml docs/gguf.md) rather than the `gguf` package
(llama.cpp's gguf-py): that one memory-maps the file and turns every array element into numpy
fields, which takes 1.8 s on the shipped 135M model for its 49k-token vocabulary (more for a
150k vocabulary), and it pulls in PyYAML, requests and tqdm. This one skips long arrays by their
lengths and reads only the header: milliseconds, standard library only. It serves the GPU fit
(`model_facts`) and `sagectl models show` (architecture, context length, quant, chat template,
parameters, size).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .gpu_fit import ModelFacts, facts_from_tensors

__all__ = ["GGML_TYPE_SIZES", "GgufError", "GgufInfo", "TensorInfo", "model_facts", "read_gguf_info"]

GGUF_MAGIC = b"GGUF"
KEEP_ARRAY_ITEMS = 4096  # longer arrays (vocabularies, merges) keep only their length

# GGML tensor type -> (values per block, bytes per block); ggml.h / gguf-py GGML_QUANT_SIZES.
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}  # fmt: skip

# general.file_type -> the quant's usual name (llama.h enum llama_ftype).
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip

# GGUF metadata value types: fixed-size scalars as struct formats.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """Not a GGUF file we can read (bad magic, unsupported version, truncated)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class ArrayInfo:
    """A metadata array too long to keep (a vocabulary): its element type and length."""

    item_type: int
    length: int


@dataclass(frozen=True)
class GgufInfo:
    path: str
    version: int
    file_size: int
    metadata: dict[str, Any]  # scalars, strings, short arrays as lists, long ones as ArrayInfo
    tensors: tuple[TensorInfo, ...]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def _arch_int(self, key: str, default: int = 0) -> int:
        value = self.arch_value(key, default)
        if isinstance(value, list):  # per-layer values (some models): the largest
            return int(max(value, default=default))
        return int(value)

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name", ""))

    @property
    def context_length(self) -> int:
        return self._arch_int("context_length")

    @property
    def block_count(self) -> int:
        return self._arch_int("block_count")

    @property
    def file_type(self) -> str:
        """The quant, as llama.cpp names it (Q4_K_M), from general.file_type; "" where unset."""
        value = self.metadata.get("general.file_type")
        return FILE_TYPES.get(int(value), f"type {value}") if value is not None else ""

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_vocab(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArrayInfo):
            return tokens.length
        if isinstance(tokens, list):
            return len(tokens)
        return self._arch_int("vocab_size")


def model_facts(info: GgufInfo) -> ModelFacts:
    """What the GPU fit needs, from the metadata llama.cpp reads (llama-model.cpp's LLM_KV_* keys)."""
    n_embd = info._arch_int("embedding_length")
    n_head = info._arch_int("attention.head_count", 1) or 1
    n_head_kv = info._arch_int("attention.head_count_kv", n_head)
    head_dim_k = info._arch_int("attention.key_length", n_embd // n_head)
    head_dim_v = info._arch_int("attention.value_length", n_embd // n_head)
    return facts_from_tensors(
        [(t.name, t.nbytes) for t in info.tensors],
        n_layer=info.block_count, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        head_dim_k=head_dim_k, head_dim_v=head_dim_v, n_vocab=info.n_vocab,
    )  # fmt: skip


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes):
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise GgufError("truncated GGUF header")
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise GgufError("truncated GGUF string")
        text = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def skip_string(self) -> None:
        n = self.take("Q")
        self.pos += n

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, length = self.take("I"), self.take("Q")
            if length > KEEP_ARRAY_ITEMS:
                if item in _SCALARS:
                    self.pos += length * struct.calcsize("<" + _SCALARS[item])
                elif item == _STRING:
                    for _ in range(length):
                        self.skip_string()
                else:
                    for _ in range(length):
                        self.value(item)
                if self.pos > len(self.buf):
                    raise GgufError("truncated GGUF array")
                return ArrayInfo(item, length)
            return [self.value(item) for _ in range(length)]
        raise GgufError(f"unknown GGUF value type {kind}")


def read_gguf_info(path: str | Path) -> GgufInfo:
    """Read the header of the GGUF at `path` (GGUF v2 and v3, little-endian)."""
    path = Path(path)
    with path.open("rb") as f:
        size = path.stat().st_size
        if size < 24:
            raise GgufError(f"{path}: not a GGUF file (too small)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != GGUF_MAGIC:
                raise GgufError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
            cur = _Cursor(buf)
            cur.pos = 4
            version = cur.take("I")
            if version not in (2, 3):
                raise GgufError(f"{path}: GGUF version {version} is not supported (2 and 3 are; a big-endian file reads as a huge version)")
            n_tensors, n_kv = cur.take("Q"), cur.take("Q")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cur.string()
                metadata[key] = cur.value(cur.take("I"))
            tensors = []
            for _ in range(n_tensors):
                name = cur.string()
                n_dims = cur.take("I")
                shape = tuple(cur.take("Q") for _ in range(n_dims))
                ggml_type = cur.take("I")
                cur.take("Q")  # data offset
                block, type_size = GGML_TYPE_SIZES.get(ggml_type, (0, 0))
                n = 1
                for d in shape:
                    n *= d
                nbytes = n // block * type_size if block else 0
                tensors.append(TensorInfo(name, shape, ggml_type, nbytes))
    return GgufInfo(str(path), version, size, metadata, tuple(tensors))
