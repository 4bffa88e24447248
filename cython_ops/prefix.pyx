# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Prefix-cache block hashes of token ids, and the longest common prefix of two id arrays.

Hash of block i (tokens [i*B, (i+1)*B)), chained like vLLM's prefix-cache block hashes so it
covers every token before the block's end::

    acc = parent                      # parent = SEED for the first block, else the previous hash
    for t in block: acc = (acc ^ uint64(t)) * FNV_PRIME; acc ^= acc >> 29
    hash = fmix64(acc ^ B)            # MurmurHash3 finalizer

All arithmetic is modulo 2**64 on the token values (not their dtype), so results are the same
for int32 and int64 input and across processes (no Python hash randomisation).
"""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport uint64_t, int64_t, int32_t

cnp.import_array()

cdef uint64_t SEED = 0x243F6A8885A308D3ULL
cdef uint64_t FNV_PRIME = 0x100000001B3ULL

ctypedef fused ids_t:
    int32_t
    int64_t


cdef inline uint64_t _fmix64(uint64_t z) noexcept nogil:
    z ^= z >> 33
    z *= 0xFF51AFD7ED558CCDULL
    z ^= z >> 33
    z *= 0xC4CEB9FE1A85EC53ULL
    z ^= z >> 33
    return z


cdef Py_ssize_t _hash_blocks(const ids_t* ids, Py_ssize_t nblocks, Py_ssize_t bs, uint64_t* out) noexcept nogil:
    """Returns -1, or the index of the first negative token id."""
    cdef uint64_t h = SEED, acc
    cdef Py_ssize_t blk, j, base
    cdef int64_t t
    for blk in range(nblocks):
        acc = h
        base = blk * bs
        for j in range(bs):
            t = ids[base + j]
            if t < 0:
                return base + j
            acc = (acc ^ <uint64_t> t) * FNV_PRIME
            acc ^= acc >> 29
        h = _fmix64(acc ^ <uint64_t> bs)
        out[blk] = h
    return -1


def _as_ids(x, str name):
    """A 1-D C-contiguous int32/int64 array of token ids (lists are converted)."""
    if not isinstance(x, np.ndarray):
        if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
            raise ValueError(f"{name} must be a 1-D array or sequence of non-negative int token ids")
        try:
            x = np.asarray(x, dtype=np.int64) if len(x) else np.zeros(0, dtype=np.int64)
        except (TypeError, OverflowError, ValueError) as exc:
            raise ValueError(f"{name} must hold int token ids: {exc}") from None
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got ndim={x.ndim}")
    if x.dtype.kind not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if x.dtype != np.int32 and x.dtype != np.int64:
        if x.dtype == np.uint64 and x.size and x.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} holds token ids above 2**63-1")
        x = x.astype(np.int64)
    return x


def prefix_hashes(token_ids, block_size):
    """prefix_hashes(token_ids: np.ndarray[int32|int64] | Sequence[int], block_size: int) -> np.ndarray[uint64]

    One chained 64-bit hash per full block of ``block_size`` tokens (a trailing partial block
    gets none). Token ids must be non-negative.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise ValueError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size <= 0:
        raise ValueError(f"block_size must be > 0, got {block_size}")
    ids = _as_ids(token_ids, "token_ids")
    cdef Py_ssize_t bs = block_size
    cdef Py_ssize_t nblocks = ids.shape[0] // bs
    out = np.empty(nblocks, dtype=np.uint64)
    if nblocks == 0:
        return out
    cdef uint64_t[::1] o = out
    cdef const int32_t[::1] a32
    cdef const int64_t[::1] a64
    cdef Py_ssize_t bad
    if ids.dtype == np.int32:
        a32 = ids
        with nogil:
            bad = _hash_blocks(&a32[0], nblocks, bs, &o[0])
    else:
        a64 = ids
        with nogil:
            bad = _hash_blocks(&a64[0], nblocks, bs, &o[0])
    if bad >= 0:
        raise ValueError(f"token ids must be non-negative, got {ids[bad]} at position {bad}")
    return out


cdef Py_ssize_t _lcp(const ids_t* a, const ids_t* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def longest_common_prefix(a, b):
    """longest_common_prefix(a: np.ndarray[int32|int64] | Sequence[int], b: same) -> int

    Number of leading positions where the two token-id arrays hold equal values."""
    x = _as_ids(a, "a")
    y = _as_ids(b, "b")
    if x.dtype != y.dtype:
        x = x.astype(np.int64)
        y = y.astype(np.int64)
    cdef Py_ssize_t n = min(x.shape[0], y.shape[0])
    cdef Py_ssize_t r
    if n == 0:
        return 0
    cdef const int32_t[::1] x32, y32
    cdef const int64_t[::1] x64, y64
    if x.dtype == np.int32:
        x32 = x
        y32 = y
        with nogil:
            r = _lcp(&x32[0], &y32[0], n)
    else:
        x64 = x
        y64 = y
        with nogil:
            r = _lcp(&x64[0], &y64[0], n)
    return r
