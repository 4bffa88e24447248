"""Cython hot operators: text chunking, top-k similarity, BM25 and prefix-cache hashing.

A leaf package (imports nothing from sage_daemon or sage_client). Every operator is compiled;
there is deliberately no pure-Python fallback: a missing build fails here, loudly.
"""

from __future__ import annotations

try:
    from cython_ops.bm25 import BM25Index, tokenize
    from cython_ops.chunking import DEFAULT_SEPARATORS, chunk_text, chunk_text_with_offsets
    from cython_ops.prefix import longest_common_prefix, prefix_hashes
    from cython_ops.similarity import topk
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "cython_ops: the compiled operator modules are missing or broken "
        f"({exc}); build them with `python setup.py build_ext --inplace` or reinstall the package"
    ) from exc

__all__ = [
    "BM25Index",
    "DEFAULT_SEPARATORS",
    "chunk_text",
    "chunk_text_with_offsets",
    "longest_common_prefix",
    "prefix_hashes",
    "tokenize",
    "topk",
]
