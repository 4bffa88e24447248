"""topk against exact numpy computation (the reference) and faiss.IndexFlatIP."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cython_ops import topk

from . import reference


@st.composite
def integer_problems(draw):
    # Small integer values: every dot product is exact in float32, so results (ties
    # included) must equal the reference bit for bit.
    n = draw(st.integers(1, 300))
    d = draw(st.integers(1, 24))
    m = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    lo = draw(st.integers(-3, 0))
    x = rng.integers(lo, 4, size=(n, d)).astype(np.float32)
    q = rng.integers(-3, 4, size=(m, d)).astype(np.float32)
    k = draw(st.integers(1, n))
    single = draw(st.booleans())
    return x, (q[0] if single else q), k


@settings(max_examples=150, deadline=None)
@given(integer_problems())
def test_inner_product_exact_with_ties(problem):
    x, q, k = problem
    idx, scores = topk(x, q, k)
    ref_idx, ref_scores = reference.topk(x, q, k)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    assert idx.shape == ref_idx.shape
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(integer_problems())
def test_cosine_matches_reference(problem):
    x, q, k = problem
    q2 = np.atleast_2d(q)
    if not np.linalg.norm(q2, axis=1).all():
        with pytest.raises(ValueError, match="non-zero query"):
            topk(x, q, k, metric="cosine")
        return
    idx, scores = topk(x, q, k, metric="cosine")
    ref_idx, ref_scores = reference.topk(x, q, k, metric="cosine")
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    # Rounding may reorder near-ties; the scores at each rank still agree, and every
    # returned index scores what the reference says it scores.
    full = reference.topk(x, q, x.shape[0], metric="cosine")
    full_scores = np.atleast_2d(full[1])
    full_idx = np.atleast_2d(full[0])
    for j, row in enumerate(np.atleast_2d(idx)):
        lookup = dict(zip(full_idx[j].tolist(), full_scores[j].tolist()))
        np.testing.assert_allclose([lookup[i] for i in row], np.atleast_2d(scores)[j], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [1, 7, 40])
def test_matches_faiss_index_flat_ip(m):
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(m)
    x = rng.standard_normal((9000, 64)).astype(np.float32)   # > one sgemm block (4096 rows)
    q = rng.standard_normal((m, 64)).astype(np.float32)
    index = faiss.IndexFlatIP(64)
    index.add(x)
    f_scores, f_idx = index.search(q, 10)
    idx, scores = topk(x, q, 10)
    np.testing.assert_allclose(scores, f_scores, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(idx, f_idx)   # continuous random data: no ties


def test_memory_mapped_matrix(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    path = tmp_path / "m.f32"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=(500, 32))
    q = rng.standard_normal(32).astype(np.float32)
    idx, scores = topk(mm, q, 5)
    ref_idx, ref_scores = topk(x, q, 5)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(scores, ref_scores)
    np.testing.assert_array_equal(idx, np.argsort(-(x.astype(np.float64) @ q))[:5])


X = np.ones((10, 4), dtype=np.float32)
Q = np.ones(4, dtype=np.float32)


def _nan_row():
    x = X.copy()
    x[7, 2] = np.nan
    return x


@pytest.mark.parametrize(
    "matrix,queries,k,metric,match",
    [
        (X.astype(np.float64), Q, 3, "ip", "matrix must have dtype float32"),
        (X.tolist(), Q, 3, "ip", "matrix must be a numpy float32 array"),
        (X[None], Q, 3, "ip", r"matrix must be 2-D"),
        (X[:, ::2], Q[:2], 3, "ip", "matrix must be C-contiguous"),
        (np.zeros((0, 4), np.float32), Q, 1, "ip", "matrix must be non-empty"),
        (X, Q.astype(np.float64), 3, "ip", "queries must have dtype float32"),
        (X, np.ones((2, 2, 4), np.float32), 3, "ip", "queries must be 1-D"),
        (X, np.ones((4, 8), np.float32)[:, ::2], 3, "ip", "queries must be C-contiguous"),
        (X, np.ones(5, np.float32), 3, "ip", "query dimension 5 does not match matrix dimension 4"),
        (X, Q, 0, "ip", r"k must be in 1\.\.n=10"),
        (X, Q, -1, "ip", r"k must be in 1\.\.n=10"),
        (X, Q, 11, "ip", r"k must be in 1\.\.n=10"),
        (X, Q, 2.0, "ip", "k must be an int"),
        (X, Q, 3, "l2", "metric must be 'ip' or 'cosine'"),
        (X, np.array([1, np.nan, 0, 0], np.float32), 3, "ip", "queries contain NaN"),
        (X, np.array([1, np.inf, 0, 0], np.float32), 3, "ip", "queries contain NaN or inf"),
        (_nan_row(), Q, 3, "ip", "matrix row 7 gives a non-finite score"),
        (_nan_row(), np.ones((3, 4), np.float32), 3, "ip", "matrix row 7 gives a non-finite score"),
        (_nan_row(), Q, 3, "cosine", "matrix row 7"),
        (X, np.zeros(4, np.float32), 3, "cosine", "non-zero query"),
        (X, np.zeros((0, 4), np.float32), 3, "ip", "at least one query"),
    ],
)
def test_bad_input(matrix, queries, k, metric, match):
    with pytest.raises(ValueError, match=match):
        topk(matrix, queries, k, metric=metric)
