"""Find which KV-cache sequence shares the longest token prefix with a new prompt.

The llama.cpp engine keeps, per slot, the tokens whose KV cells are in the cache (a live
sequence's prompt and generated tokens so far, or an idle slot's last sequence). A new
prompt that starts with the same tokens copies those cells instead of prefilling them.

Lookup in two stages: block hashes (`cython_ops.prefix_hashes`, a chained hash per full
block of `block_size` tokens, so hash i covers tokens[: (i + 1) * block_size]) pick the
candidate slot cheaply and in C, then `cython_ops.longest_common_prefix` measures the exact
match, which also guards against hash collisions and extends the match into the last,
partial block. In a checkout whose extensions are not built yet, pure-Python equivalents keep
the engine working (slower lookups; the tests check the compiled path is the one in use).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt

try:  # the compiled operators (helper branch `ops`); optional at import time
    from cython_ops.prefix import longest_common_prefix as _lcp_c  # type: ignore[import-not-found]
    from cython_ops.prefix import prefix_hashes as _prefix_hashes_c  # type: ignore[import-not-found]

    HAVE_CYTHON_OPS = True
except ImportError:  # pragma: no cover - depends on the build
    _lcp_c = None
    _prefix_hashes_c = None
    HAVE_CYTHON_OPS = False

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MASK = (1 << 64) - 1


def _prefix_hashes_py(tokens: npt.NDArray[np.int32], block_size: int) -> npt.NDArray[np.uint64]:
    """Chained FNV-1a over token ids, one value per full block (the reference, slow path)."""
    n_blocks = len(tokens) // block_size
    out = np.empty(n_blocks, dtype=np.uint64)
    h = int(_FNV_OFFSET)
    prime = int(_FNV_PRIME)
    for b in range(n_blocks):
        for t in tokens[b * block_size : (b + 1) * block_size].tolist():
            h = ((h ^ (t & 0xFFFFFFFF)) * prime) & _MASK
        out[b] = h
    return out


def _lcp_py(a: npt.NDArray[np.int32], b: npt.NDArray[np.int32]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def prefix_hashes(tokens: npt.NDArray[np.int32], block_size: int) -> npt.NDArray[np.uint64]:
    if _prefix_hashes_c is not None:
        return np.asarray(_prefix_hashes_c(tokens, block_size), dtype=np.uint64)
    return _prefix_hashes_py(tokens, block_size)


def longest_common_prefix(a: npt.NDArray[np.int32], b: npt.NDArray[np.int32]) -> int:
    if _lcp_c is not None:
        return int(_lcp_c(a, b))
    return _lcp_py(a, b)


def as_token_array(tokens: Sequence[int] | npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    return np.ascontiguousarray(tokens, dtype=np.int32)


class PrefixMatch(msgspec.Struct, frozen=True):
    slot: int
    n_tokens: int  # tokens of the new prompt already in that slot's KV cells


class PrefixIndex:
    """Block hashes of each slot's cached tokens, recomputed lazily when a slot changes."""

    def __init__(self, block_size: int = 16):
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.block_size = block_size
        # slot -> (number of tokens hashed, their block hashes)
        self._hashes: dict[int, tuple[int, npt.NDArray[np.uint64]]] = {}

    def forget(self, slot: int) -> None:
        self._hashes.pop(slot, None)

    def _slot_hashes(self, slot: int, tokens: npt.NDArray[np.int32]) -> npt.NDArray[np.uint64]:
        cached = self._hashes.get(slot)
        # A slot's tokens only grow, or are reset through forget(): equal length = same tokens.
        if cached is not None and cached[0] == len(tokens):
            return cached[1]
        hashes = prefix_hashes(tokens, self.block_size)
        self._hashes[slot] = (len(tokens), hashes)
        return hashes

    def best_match(
        self,
        prompt: npt.NDArray[np.int32],
        slot_tokens: dict[int, npt.NDArray[np.int32]],
        min_tokens: int | None = None,
    ) -> PrefixMatch | None:
        """The slot sharing the longest prefix with `prompt` (at least `min_tokens`, default one block).

        Ties go to the slot listed first in `slot_tokens` (the caller orders its preference).
        """
        min_tokens = self.block_size if min_tokens is None else min_tokens
        if len(prompt) < min_tokens or not slot_tokens:
            return None
        prompt_hashes = prefix_hashes(prompt, self.block_size)
        best: PrefixMatch | None = None
        best_blocks = -1
        candidates: list[tuple[int, int]] = []
        for slot, tokens in slot_tokens.items():
            hashes = self._slot_hashes(slot, tokens)
            n = min(len(hashes), len(prompt_hashes))
            mismatch = np.flatnonzero(hashes[:n] != prompt_hashes[:n])
            blocks = int(mismatch[0]) if len(mismatch) else n
            candidates.append((slot, blocks))
            best_blocks = max(best_blocks, blocks)
        # Exact check on the slots whose block hashes reach furthest (usually one); the
        # partial last block is only visible to the exact comparison.
        for slot, blocks in candidates:
            if blocks != best_blocks:
                continue
            n = longest_common_prefix(prompt, slot_tokens[slot])
            if n >= min_tokens and (best is None or n > best.n_tokens):
                best = PrefixMatch(slot=slot, n_tokens=n)
        return best
