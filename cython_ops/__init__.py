"""Cython hot operators: text chunking, top-k similarity, BM25, prefix-cache hashing, token
sampling from logits, the flag-reading C callback llama.cpp calls to cut a decode step short, and
the HTTP door's accept step (admit or refuse a batch of connections without the GIL).

A leaf package (imports nothing from sage_daemon or sage_client). Every operator is compiled;
there is deliberately no pure-Python fallback: a missing build fails here, loudly.
"""

from __future__ import annotations

try:
    from cython_ops.abort import flag_callback_address, flag_is_set
    from cython_ops.accept import AcceptGate, Outcome
    from cython_ops.bm25 import ENGLISH_STOPWORDS, BM25Index, tokenize
    from cython_ops.chunking import (
        DEFAULT_SEPARATORS,
        MARKDOWN_SEPARATORS,
        chunk_text,
        chunk_text_with_offsets,
        chunk_texts,
        chunk_texts_with_offsets,
    )
    from cython_ops.prefix import longest_common_prefix, prefix_hashes
    from cython_ops.sampling import sample_logits
    from cython_ops.similarity import topk
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "cython_ops: the compiled operator modules are missing or broken "
        f"({exc}); build them with `python setup.py build_ext --inplace` or reinstall the package"
    ) from exc

__all__ = [
    "AcceptGate",
    "BM25Index",
    "DEFAULT_SEPARATORS",
    "ENGLISH_STOPWORDS",
    "MARKDOWN_SEPARATORS",
    "Outcome",
    "chunk_text",
    "chunk_text_with_offsets",
    "chunk_texts",
    "chunk_texts_with_offsets",
    "flag_callback_address",
    "flag_is_set",
    "longest_common_prefix",
    "prefix_hashes",
    "sample_logits",
    "tokenize",
    "topk",
]
