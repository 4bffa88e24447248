"""BM25Index against rank_bm25.BM25Okapi and the pure-Python reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from hypothesis import strategies as st

from cython_ops import BM25Index, tokenize

from . import reference

rank_bm25 = pytest.importorskip("rank_bm25")

WORDS = ["cat", "Dog", "the", "a", "zebra", "éclair", "über", "x1", "foo_bar", "naïve", "日本"]
DOC = st.lists(st.sampled_from(WORDS + [" ", ", ", "!", "\n", "-"]), max_size=30).map("".join)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80))
def test_tokenizer_is_regex_word_runs(text):
    assert tokenize(text) == reference.tokenize(text)


@settings(max_examples=120, deadline=None)
@given(
    docs=st.lists(DOC, min_size=1, max_size=40),
    queries=st.lists(DOC, min_size=1, max_size=4),
    k1=st.sampled_from([1.5, 1.2, 0.0, 2.0]),
    b=st.sampled_from([0.75, 0.0, 1.0]),
    data=st.data(),
)
def test_scores_and_topk_match_rank_bm25(docs, queries, k1, b, data):
    tokens = [tokenize(d) for d in docs]
    index = BM25Index(docs, k1=k1, b=b)
    assert index.n_docs == len(docs)
    if not any(tokens):
        return  # rank_bm25 divides by zero on a corpus without tokens
    okapi = rank_bm25.BM25Okapi(tokens, k1=k1, b=b)
    k = data.draw(st.integers(1, len(docs)))
    idx, scores = index.search_batch(queries, k)
    for j, q in enumerate(queries):
        with np.errstate(invalid="ignore"):
            expected = okapi.get_scores(tokenize(q))
        got = index.get_scores(q)
        # rank_bm25 computes 0/0 = NaN for a document without a query term when its length
        # normalisation is 0 (k1 = 0, or b = 1 and an empty document): compare where it is
        # defined; the reference (absent terms add 0) covers every document.
        defined = ~np.isnan(expected)
        np.testing.assert_allclose(got[defined], expected[defined], rtol=0, atol=1e-6)
        ref = np.array(reference.bm25_scores(tokens, tokenize(q), k1, b))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)
        expected = ref
        # Top k: best score first, ties by lower index, over all documents (also those
        # without any query term, which score 0 and beat negative scores).
        order = reference.bm25_topk(list(index.get_scores(q)), k)
        assert idx[j].tolist() == order
        np.testing.assert_allclose(scores[j], expected[order], rtol=0, atol=1e-6)
        one_idx, one_scores = index.search(q, k)
        np.testing.assert_array_equal(one_idx, idx[j])


def test_negative_idf_epsilon_floor():
    # "the" is in every document: its IDF is negative and rank_bm25 floors it at epsilon * mean IDF.
    docs = ["the cat", "the dog", "the bird", "the cat and the dog"]
    index = BM25Index(docs)
    okapi = rank_bm25.BM25Okapi([tokenize(d) for d in docs])
    for q in ["the", "the cat", "dog the dog", "unknown words", "The CAT!"]:
        np.testing.assert_allclose(index.get_scores(q), okapi.get_scores(tokenize(q)), atol=1e-6)
    assert okapi.get_scores(["the"]).min() != 0


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: BM25Index([]), "at least one document"),
        (lambda: BM25Index("just a string"), "sequence of str"),
        (lambda: BM25Index(["ok", 3]), "documents must be str"),
        (lambda: BM25Index(["ok"], k1=-1), "k1 must be >= 0"),
        (lambda: BM25Index(["ok"], b=1.5), r"b must be in \[0, 1\]"),
        (lambda: BM25Index(["ok"], epsilon=float("nan")), "epsilon must be a finite number"),
        (lambda: BM25Index(["a", "b"]).search("a", 0), r"k must be in 1\.\.n_docs=2"),
        (lambda: BM25Index(["a", "b"]).search("a", 3), r"k must be in 1\.\.n_docs=2"),
        (lambda: BM25Index(["a", "b"]).search("a", 1.5), "k must be an int"),
        (lambda: BM25Index(["a", "b"]).search(b"a", 1), "query must be a str"),
        (lambda: BM25Index(["a", "b"]).search_batch("a", 1), "not a str"),
        (lambda: tokenize(None), "text must be a str"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_stopwords_are_left_out_of_documents_and_queries():
    from cython_ops import ENGLISH_STOPWORDS

    docs = ["How do I run the test suite?", "The daemon listens on the port of the door", "run bash scripts/test.sh to test"]
    index = BM25Index(docs, stopwords=ENGLISH_STOPWORDS)
    kept = [[t for t in tokenize(d) if t not in ENGLISH_STOPWORDS] for d in docs]
    query = "how do I run the test suite"
    ref = reference.bm25_scores(kept, [t for t in tokenize(query) if t not in ENGLISH_STOPWORDS], 1.5, 0.75)
    np.testing.assert_allclose(index.get_scores(query), ref, rtol=0, atol=1e-9)
    assert "the" not in tokenize(" ".join(kept[1])) and index.stopwords == ENGLISH_STOPWORDS
    assert index.get_scores("the of how").tolist() == [0.0, 0.0, 0.0]  # only stop words: nothing matches
    with pytest.raises(ValueError, match="not one str"):
        BM25Index(docs, stopwords="the")
