"""The scoring rules of benchmarks/retrieval.py (recall@k, MRR, which chunk counts as correct) on
hand-made data; the benchmark file is imported by path (benchmarks/ is not a package)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "retrieval.py"


@pytest.fixture(scope="module")
def rb():
    spec = importlib.util.spec_from_file_location("retrieval_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["retrieval_bench"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("retrieval_bench", None)


def test_answer_spans_finds_every_occurrence_and_rejects_a_missing_answer(rb):
    text = "alpha beta gamma beta"
    assert rb.answer_spans(text, ["beta"]) == [(6, 10), (17, 21)]
    assert rb.answer_spans(text, ["gamma", "alpha"]) == [(11, 16), (0, 5)]
    with pytest.raises(ValueError, match="delta"):
        rb.answer_spans(text, ["alpha", "delta"], "q1")
    with pytest.raises(ValueError, match="empty"):
        rb.answer_spans(text, [""], "q1")


def test_a_chunk_holding_the_whole_answer_is_correct(rb):
    spans = [(100, 140)]
    assert rb.chunk_is_correct("README.md", 50, 200, "README.md", spans)
    assert rb.chunk_is_correct("README.md", 100, 40, "README.md", spans)  # exactly the answer


def test_a_chunk_from_another_file_is_never_correct(rb):
    assert not rb.chunk_is_correct("docs/ARCHITECTURE.md", 50, 200, "README.md", [(100, 140)])


def test_a_cut_answer_counts_where_the_chunk_holds_at_least_half(rb):
    spans = [(100, 140)]  # 40 characters
    assert rb.chunk_is_correct("a.md", 0, 120, "a.md", spans)  # [0, 120): 20 of 40, half
    assert not rb.chunk_is_correct("a.md", 0, 119, "a.md", spans)  # 19 of 40
    assert rb.chunk_is_correct("a.md", 120, 500, "a.md", spans)  # [120, 620): the last 20
    assert not rb.chunk_is_correct("a.md", 121, 500, "a.md", spans)
    assert not rb.chunk_is_correct("a.md", 0, 100, "a.md", spans)  # ends where the answer starts
    assert not rb.chunk_is_correct("a.md", 140, 100, "a.md", spans)  # starts where it ends
    # Odd length: 2 * overlap >= length, i.e. 3 of 5 characters, not 2.
    assert rb.chunk_is_correct("a.md", 0, 3, "a.md", [(0, 5)])
    assert not rb.chunk_is_correct("a.md", 0, 2, "a.md", [(0, 5)])


def test_any_answer_span_is_enough(rb):
    spans = [(0, 10), (500, 520)]
    assert rb.chunk_is_correct("a.md", 490, 100, "a.md", spans)
    assert not rb.chunk_is_correct("a.md", 100, 300, "a.md", spans)


def test_first_correct_rank_recall_and_mrr(rb):
    assert rb.first_correct_rank([False, False, True, True]) == 3
    assert rb.first_correct_rank([True]) == 1
    assert rb.first_correct_rank([False, False]) is None
    assert rb.first_correct_rank([]) is None

    ranks = [1, 3, None, 6]
    assert rb.recall_at(ranks, 1) == pytest.approx(0.25)
    assert rb.recall_at(ranks, 5) == pytest.approx(0.5)
    assert rb.recall_at(ranks, 10) == pytest.approx(0.75)
    assert rb.mrr(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 6) / 4)
    assert rb.mrr(ranks, depth=5) == pytest.approx((1 + 1 / 3) / 4)  # rank 6 is past the depth
    assert rb.recall_at([], 5) == 0.0 and rb.mrr([]) == 0.0


def test_ranks_of_scores_hits_with_the_rule(rb):
    questions = [
        rb.Question("q1", "?", "a.md", [(100, 140)]),
        rb.Question("q2", "?", "b.md", [(0, 10)]),
        rb.Question("q3", "?", "a.md", [(900, 910)]),
    ]
    hits = [
        [("b.md", 0, 800), ("a.md", 700, 800), ("a.md", 0, 800)],  # right file at rank 3
        [("b.md", 0, 800)],
        [("a.md", 0, 800), ("b.md", 850, 800)],  # the span only in another file
    ]
    assert rb.ranks_of(questions, hits) == [3, 1, None]


def test_load_questions_aborts_listing_every_wrong_answer(rb, tmp_path):
    (tmp_path / "doc.md").write_text("The daemon listens on port 8080.\n", encoding="utf-8")
    good = {"id": "q1", "question": "Which port?", "source": "doc.md", "answer": ["port 8080"]}
    path = tmp_path / "questions.json"
    path.write_text(json.dumps({"questions": [good]}), encoding="utf-8")
    (q,) = rb.load_questions(path, tmp_path)
    assert (q.id, q.source, q.spans) == ("q1", "doc.md", [(22, 31)])

    bad = [good, {**good, "id": "q2", "answer": ["port 9090"]}, {**good, "id": "q3", "source": "nope.md"}]
    path.write_text(json.dumps({"questions": bad}), encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        rb.load_questions(path, tmp_path)
    assert "port 9090" in str(info.value) and "q3" in str(info.value)


def test_the_shipped_question_set_is_answerable(rb):
    questions = rb.load_questions()
    assert len(questions) >= 40
    assert len({q.id for q in questions}) == len(questions)
