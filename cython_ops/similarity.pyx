# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Exact top-k by inner product or cosine over a float32 matrix.

Scores come from BLAS (``scipy.linalg.cython_blas``): ``sgemv`` over the whole matrix for one
query (memory-bound: one pass over the matrix, OpenBLAS threads split the rows), ``sgemm`` on
row blocks for a batch (compute-bound). A bounded min-heap per query keeps the k best
(score desc, index asc). All of it runs without the GIL.
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport sqrtf, fabsf, NAN
from libc.stdlib cimport malloc, free
from scipy.linalg.cython_blas cimport sgemm, sgemv

cnp.import_array()

cdef extern from "float.h":
    float FLT_MAX

# Rows per sgemm block in the batch path: the block's scores (BLOCK x m floats) stay in cache
# while the heaps consume them.
cdef Py_ssize_t BLOCK = 4096


def _set_block_rows(Py_ssize_t rows):
    """Tuning hook for benchmarks: rows per sgemm block in the batch path."""
    global BLOCK
    if rows <= 0:
        raise ValueError("rows must be > 0")
    BLOCK = rows


cdef inline bint _worse(float sa, long long ia, float sb, long long ib) noexcept nogil:
    """Is (sa, ia) ranked below (sb, ib)? Higher score first, then lower index."""
    return sa < sb or (sa == sb and ia > ib)


cdef inline void _sift_down(float* hs, long long* hi, Py_ssize_t size, Py_ssize_t pos) noexcept nogil:
    cdef Py_ssize_t child
    cdef float s = hs[pos]
    cdef long long i = hi[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(hs[child + 1], hi[child + 1], hs[child], hi[child]):
            child += 1
        if _worse(hs[child], hi[child], s, i):
            hs[pos] = hs[child]
            hi[pos] = hi[child]
            pos = child
        else:
            break
    hs[pos] = s
    hi[pos] = i


cdef inline void _push(float* hs, long long* hi, Py_ssize_t* size, Py_ssize_t k, float s,
                       long long i) noexcept nogil:
    """Offer (s, i) to a min-heap (root = worst kept) of capacity k."""
    cdef Py_ssize_t pos, parent
    if size[0] < k:
        pos = size[0]
        size[0] += 1
        while pos > 0:
            parent = (pos - 1) >> 1
            if _worse(s, i, hs[parent], hi[parent]):
                hs[pos] = hs[parent]
                hi[pos] = hi[parent]
                pos = parent
            else:
                break
        hs[pos] = s
        hi[pos] = i
    elif _worse(hs[0], hi[0], s, i):
        hs[0] = s
        hi[0] = i
        _sift_down(hs, hi, k, 0)


cdef inline Py_ssize_t _scan(const float* scores, Py_ssize_t count, long long first_index,
                             float* hs, long long* hi, Py_ssize_t* size, Py_ssize_t k) noexcept nogil:
    """Feed scores[0:count] (rows first_index...) to the heap. Returns the offset of the first
    non-finite score, or -1."""
    cdef Py_ssize_t r
    cdef float s
    cdef float thresh
    r = 0
    # Fill phase.
    while r < count and size[0] < k:
        s = scores[r]
        if not (fabsf(s) <= FLT_MAX):
            return r
        _push(hs, hi, size, k, s, first_index + r)
        r += 1
    thresh = hs[0]
    for r in range(r, count):
        s = scores[r]
        # Rows arrive in increasing index order, so an equal score never displaces the root.
        if s > thresh:
            if not (fabsf(s) <= FLT_MAX):
                return r
            _push(hs, hi, size, k, s, first_index + r)
            thresh = hs[0]
        elif not (s == s) or s < -FLT_MAX:
            return r
    return -1


cdef inline void _drain(float* hs, long long* hi, Py_ssize_t k, float* out_s, long long* out_i) noexcept nogil:
    """Pop the heap worst-first into out[k-1], out[k-2], ... (best ends up first)."""
    cdef Py_ssize_t size = k
    cdef Py_ssize_t pos
    for pos in range(k - 1, -1, -1):
        out_s[pos] = hs[0]
        out_i[pos] = hi[0]
        size -= 1
        if size > 0:
            hs[0] = hs[size]
            hi[0] = hi[size]
            _sift_down(hs, hi, size, 0)


def _check_matrix(matrix):
    if not isinstance(matrix, np.ndarray):
        raise ValueError(f"matrix must be a numpy float32 array of shape (n, d), got {type(matrix).__name__}")
    if matrix.dtype != np.float32:
        raise ValueError(f"matrix must have dtype float32, got {matrix.dtype}")
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D (n, d), got ndim={matrix.ndim}")
    if not matrix.flags.c_contiguous:
        raise ValueError("matrix must be C-contiguous (use np.ascontiguousarray)")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"matrix must be non-empty, got shape {matrix.shape}")


def topk(matrix, queries, k, metric="ip"):
    """topk(matrix: np.ndarray[float32, (n, d)], queries: np.ndarray[float32, (d,) | (m, d)], k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]

    The k rows of ``matrix`` with the highest inner product ("ip") or cosine similarity
    ("cosine") with each query. Returns (indices int64, scores float32), shape (k,) for one
    query of shape (d,) and (m, k) for queries of shape (m, d), sorted by score descending,
    ties broken by lower index. Raises ValueError on bad input (dtype, shape, contiguity,
    k outside 1..n, NaN/inf in the queries or the matrix, zero-norm query for cosine).
    """
    _check_matrix(matrix)
    if not isinstance(queries, np.ndarray):
        raise ValueError(f"queries must be a numpy float32 array of shape (d,) or (m, d), got {type(queries).__name__}")
    if queries.dtype != np.float32:
        raise ValueError(f"queries must have dtype float32, got {queries.dtype}")
    if queries.ndim not in (1, 2):
        raise ValueError(f"queries must be 1-D (d,) or 2-D (m, d), got ndim={queries.ndim}")
    if not queries.flags.c_contiguous:
        raise ValueError("queries must be C-contiguous (use np.ascontiguousarray)")
    single = queries.ndim == 1
    q2 = queries.reshape(1, -1) if single else queries
    cdef Py_ssize_t n = matrix.shape[0]
    cdef Py_ssize_t d = matrix.shape[1]
    cdef Py_ssize_t m = q2.shape[0]
    if q2.shape[1] != d:
        raise ValueError(f"query dimension {q2.shape[1]} does not match matrix dimension {d}")
    if m == 0:
        raise ValueError("queries must hold at least one query")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    if k <= 0 or k > n:
        raise ValueError(f"k must be in 1..n={n}, got {k}")
    if metric not in ("ip", "cosine"):
        raise ValueError(f"metric must be 'ip' or 'cosine', got {metric!r}")
    if not np.isfinite(q2).all():
        raise ValueError("queries contain NaN or inf")
    if n > 2147483647 or d > 2147483647:
        raise ValueError("matrix too large for 32-bit BLAS indexing")
    cdef bint cosine = metric == "cosine"
    if cosine:
        qnorm = np.sqrt(np.einsum("ij,ij->i", q2.astype(np.float64), q2.astype(np.float64)))
        if (qnorm == 0).any():
            raise ValueError("cosine metric needs non-zero query vectors")
        q2 = np.ascontiguousarray(q2 / qnorm[:, None], dtype=np.float32)

    cdef const float[:, ::1] X = matrix
    cdef const float[:, ::1] Q = q2
    cdef Py_ssize_t kk = k
    out_i = np.empty((m, kk), dtype=np.int64)
    out_s = np.empty((m, kk), dtype=np.float32)
    cdef long long[:, ::1] OI = out_i
    cdef float[:, ::1] OS = out_s
    cdef Py_ssize_t bad = _topk_kernel(&X[0, 0], n, d, &Q[0, 0], m, kk, cosine, &OS[0, 0], &OI[0, 0])
    if bad == -2:
        raise MemoryError()
    if bad >= 0:
        raise ValueError(f"matrix row {bad} gives a non-finite score (NaN or inf in the matrix)")
    if single:
        return out_i[0], out_s[0]
    return out_i, out_s


cdef Py_ssize_t _topk_kernel(const float* X, Py_ssize_t n, Py_ssize_t d, const float* Q, Py_ssize_t m,
                             Py_ssize_t k, bint cosine, float* out_s, long long* out_i) except -3:
    """Returns -1 on success, -2 on allocation failure, or the index of a row with a non-finite score."""
    cdef Py_ssize_t bs = n if m == 1 else (BLOCK if n > BLOCK else n)
    cdef float* scores = <float*> malloc(bs * m * sizeof(float))
    cdef float* hs = <float*> malloc(m * k * sizeof(float))
    cdef long long* hi = <long long*> malloc(m * k * sizeof(long long))
    cdef Py_ssize_t* sizes = <Py_ssize_t*> malloc(m * sizeof(Py_ssize_t))
    cdef Py_ssize_t bad = -1
    cdef Py_ssize_t r0, nb, j, r, c
    cdef int bn, bm, bd, inc = 1
    cdef float one = 1.0, zero = 0.0, nrm, acc
    cdef char tr = b'T', nt = b'N'
    cdef const float* row
    if scores == NULL or hs == NULL or hi == NULL or sizes == NULL:
        free(scores); free(hs); free(hi); free(sizes)
        return -2
    with nogil:
        for j in range(m):
            sizes[j] = 0
        bd = <int> d
        bm = <int> m
        r0 = 0
        while r0 < n and bad < 0:
            nb = bs if r0 + bs <= n else n - r0
            bn = <int> nb
            if m == 1:
                # scores = X[r0:r0+nb] @ q  (column-major view: X^T is d x nb)
                sgemv(&tr, &bd, &bn, &one, <float*> (X + r0 * d), &bd, <float*> Q, &inc, &zero, scores, &inc)
            else:
                # scores (nb x m, column-major) = X_block (nb x d) @ Q^T (d x m)
                sgemm(&tr, &nt, &bn, &bm, &bd, &one, <float*> (X + r0 * d), &bd, <float*> Q, &bd,
                      &zero, scores, &bn)
            if cosine:
                for r in range(nb):
                    row = X + (r0 + r) * d
                    acc = 0
                    for c in range(d):
                        acc = acc + row[c] * row[c]
                    nrm = sqrtf(acc)
                    for j in range(m):
                        if nrm > 0 and nrm <= FLT_MAX:
                            scores[j * nb + r] = scores[j * nb + r] / nrm
                        elif nrm == 0:
                            # A zero row has no direction: cosine 0 (its dot product is 0 too).
                            scores[j * nb + r] = 0.0
                        else:
                            scores[j * nb + r] = NAN   # NaN/inf in the row: reported by _scan
            for j in range(m):
                c = _scan(scores + j * nb, nb, r0, hs + j * k, hi + j * k, sizes + j, k)
                if c >= 0:
                    bad = r0 + c
                    break
            r0 += nb
        if bad < 0:
            for j in range(m):
                _drain(hs + j * k, hi + j * k, k, out_s + j * k, out_i + j * k)
    free(scores); free(hs); free(hi); free(sizes)
    return bad
