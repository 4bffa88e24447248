"""sagectl: the thin command-line client of the SAGE daemon.

Exit codes scripts can trust: 0 ok, 1 the daemon answered with an error, 2 usage,
3 the daemon is not reachable (the message says how to start it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from sage_client import service
from sage_client._version import __version__
from sage_client.output import human_bytes, human_duration, key_values, print_json, print_json_line, table
from sage_client.protocol import JOB_STATES, POLICY_NAMES, ErrorCode
from sage_client.rpc import DaemonNotRunning, RpcCallError, RpcClient

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

Command = Callable[[RpcClient, argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


# ----------------------------------------------------------------------------- commands


@command("status")
def cmd_status(client: RpcClient, args: argparse.Namespace) -> int:
    status = client.call("status")
    if args.json:
        print_json(status)
        return EXIT_OK
    rows = [
        ("state", status.state),
        ("version", status.version),
        ("pid", status.pid),
        ("uptime", human_duration(status.uptime_s)),
        ("http", status.http_url),
        ("socket", status.socket),
        ("in flight", status.in_flight),
        ("config files", ", ".join(status.config_files) or "(packaged defaults only)"),
    ]
    print(key_values(rows))
    for note in status.notes:
        print(f"note: {note}")
    return EXIT_OK


@command("ping")
def cmd_ping(client: RpcClient, args: argparse.Namespace) -> int:
    started = time.perf_counter()
    result = client.call("ping", {"payload": "ping"})
    elapsed_ms = (time.perf_counter() - started) * 1000
    if args.json:
        print_json({"ok": result.payload == "ping", "rtt_ms": round(elapsed_ms, 3), "socket": str(client.socket_path)})
    else:
        print(f"pong from {client.socket_path} in {elapsed_ms:.2f} ms")
    return EXIT_OK


@command("config show")
def cmd_config_show(client: RpcClient, args: argparse.Namespace) -> int:
    result = client.call("config.show")
    if args.json:
        print_json(result)
        return EXIT_OK
    print(table(["KEY", "VALUE", "SOURCE"], [(v.key, _short(v.value), v.source) for v in result.values]))
    return EXIT_OK


@command("nodes")
def cmd_nodes(client: RpcClient, args: argparse.Namespace) -> int:
    node = client.call("nodes")
    if args.json:
        print_json(node)
        return EXIT_OK
    gpus = ", ".join(f"#{g.index} {g.name} ({human_bytes(g.memory_free_bytes)} free of {human_bytes(g.memory_total_bytes)})" for g in node.gpus)
    rows = [
        ("host", node.hostname),
        ("cpu", f"{node.cpu_count} cores, {node.cpu_model}"),
        ("memory", f"{human_bytes(node.memory_available_bytes)} available of {human_bytes(node.memory_total_bytes)}"),
        ("gpus", gpus or f"none (detected via {node.gpu_source})"),
        ("wsl2", "yes" if node.is_wsl2 else "no"),
        ("vllm", "importable" if node.vllm_available else "not installed"),
        ("llama.cpp", "not installed" if "llamacpp" in node.engines_missing else "GPU (CUDA) build" if node.llamacpp_gpu else "CPU-only build"),
    ]
    if node.engines_missing:
        rows.append(("not installed", ", ".join(node.engines_missing)))
    print(key_values(rows))
    for note in node.overrides:
        print(f"override: {note}")
    return EXIT_OK


@command("ports")
def cmd_ports(client: RpcClient, args: argparse.Namespace) -> int:
    result = client.call("ports")
    if args.json:
        print_json(result)
        return EXIT_OK
    rows = [(p.name, p.port, "free" if p.free else "in use", p.holder or p.note) for p in result.ports]
    print(table(["NAME", "PORT", "STATE", "HOLDER / NOTE"], rows))
    print(f"\nrecommended LLM port: {result.recommended_llm_port} ({result.reason})")
    return EXIT_OK


@command("version")
def cmd_version(client: RpcClient, args: argparse.Namespace) -> int:
    result = client.call("version")
    if args.json:
        print_json({"client_version": __version__, **_as_dict(result)})
        return EXIT_OK
    rows = [("sagectl", __version__), ("sage-daemon", result.daemon_version), ("protocol", result.protocol), ("python", result.python)]
    rows += sorted(result.packages.items())
    print(key_values(rows))
    return EXIT_OK


@command("models")
def cmd_models(client: RpcClient, args: argparse.Namespace) -> int:
    if args.available:
        available = client.call("models.available")
        found = available.models
        if args.json:
            print_json(available)
            return EXIT_OK
        if not found:
            print("no models on disk: `sagectl pull hf:OWNER/REPO` fetches one (or set [paths].models_dir)")
            return EXIT_OK
        rows = [(m.name, m.kind, human_bytes(m.size_bytes), m.quant or "-", "yes" if m.added else "no", m.where, m.path) for m in found]
        print(table(["NAME", "KIND", "SIZE", "QUANT", "ADDED", "WHERE", "PATH"], rows))
        return EXIT_OK
    result = client.call("models")
    if args.json:
        print_json(result)
        return EXIT_OK
    rows = [(m.id, m.kind, m.backend, m.device, m.state, m.n_ctx or "", m.dimensions or "") for m in result.models]
    print(table(["NAME", "KIND", "BACKEND", "DEVICE", "STATE", "CONTEXT", "DIMS"], rows))
    return EXIT_OK


def _is_hub_ref(source: str) -> bool:
    import os

    return source.startswith("hf:") or (not os.path.exists(os.path.expanduser(source)) and source.count("/") in (1, 2) and not source.startswith((".", "/", "~")))


@command("models add")
def cmd_models_add(client: RpcClient, args: argparse.Namespace) -> int:
    source = args.source
    if _is_hub_ref(source):
        pulled = _pull(client, source, args.json)
        if pulled is None:
            return EXIT_ERROR
        source = pulled.path
    params: dict[str, Any] = {"name": args.name, "source": source}
    for key, value in (("kind", args.kind), ("n_ctx", args.ctx), ("parallel", args.parallel)):
        if value is not None:
            params[key] = value
    row = client.call("models.add", params)
    if args.json:
        print_json_line(row) if source != args.source else print_json(row)
    else:
        print(f"added {row.id} ({row.kind}, {row.backend} on {row.device}): {row.reason}")
        print(f"try it: sagectl run {row.id}" if row.kind == "llm" else f"it serves /v1/{'embeddings' if row.kind == 'embedding' else 'rerank'} as model {row.id!r}")
    return EXIT_OK


@command("models rm")
def cmd_models_rm(client: RpcClient, args: argparse.Namespace) -> int:
    removed = client.call("models.rm", {"name": args.name, "purge": args.purge})
    if args.json:
        print_json(removed)
        return EXIT_OK
    note = "; the config's model of that name is served again" if removed.restored else ""
    purged = f"; deleted {human_bytes(removed.purged_bytes)} of downloads" if removed.purged_bytes else ""
    print(f"removed {removed.name}{note}{purged}")
    return EXIT_OK


@command("models show")
def cmd_models_show(client: RpcClient, args: argparse.Namespace) -> int:
    detail = client.call("models.show", {"name": args.name})
    if args.json:
        print_json(detail)
        return EXIT_OK
    m = detail.model
    rows: list[tuple[str, Any]] = [("name", m.id), ("kind", m.kind), ("backend", f"{m.backend} on {m.device}"), ("state", m.state), ("from", detail.origin)]
    rows += [("file", detail.file or "-")]
    if detail.size_bytes:
        rows.append(("size", human_bytes(detail.size_bytes)))
    for label, value in (("quant", detail.quant), ("architecture", detail.architecture)):
        if value:
            rows.append((label, value))
    if detail.parameters:
        rows.append(("parameters", f"{detail.parameters / 1e9:.2f} B" if detail.parameters >= 1e9 else f"{detail.parameters / 1e6:.0f} M"))
    if detail.context_length:
        rows.append(("context length", f"{detail.context_length} (trained); {m.n_ctx or '-'} here"))
    if m.kind == "llm":
        rows += [("chat template", "yes" if detail.chat_template else "no (completions only)"), ("tool format", detail.tool_format or "-")]
    rows.append(("placement", m.reason))
    print(key_values(rows))
    return EXIT_OK


def _pull(client: RpcClient, ref: str, as_json: bool) -> Any:
    """Pull `ref` with a progress bar (or JSON lines); the PullResult, or None after Ctrl-C."""
    tty = sys.stderr.isatty() and not as_json
    try:
        stream = client.stream("models.pull", {"ref": ref})
        while True:
            try:
                event = next(stream)
            except StopIteration as end:
                result = end.value
                break
            if as_json:
                print_json_line(event)
                continue
            line = _pull_line(event)
            if tty:
                sys.stderr.write("\r" + line + "\x1b[K")
                sys.stderr.flush()
    except KeyboardInterrupt:
        print(f"\npull of {ref} interrupted; `sagectl pull {ref}` resumes it", file=sys.stderr)
        return None
    if tty:
        sys.stderr.write("\n")
    return result


def _pull_line(event: Any) -> str:
    total, done = event.get("total_bytes", 0), event.get("completed_bytes", 0)
    phase = event.get("phase", "")
    if phase != "downloading" or not total:
        return f"{phase} {event.get('file', '')}"
    width = 30
    filled = int(width * done / total)
    rate = event.get("bytes_per_s") or 0.0
    eta = event.get("eta_s")
    tail = f"{human_bytes(int(rate))}/s" + (f", {human_duration(eta)} left" if eta is not None else "")
    return f"pulling [{'#' * filled}{'.' * (width - filled)}] {human_bytes(done)}/{human_bytes(total)} {done * 100 // total:3d}% {tail}"


@command("pull")
def cmd_pull(client: RpcClient, args: argparse.Namespace) -> int:
    result = _pull(client, args.ref, args.json)
    if result is None:
        return 130
    if args.json:
        print_json_line(result)  # the last line of the JSON-lines progress stream
    else:
        print(f"pulled {result.ref}: {human_bytes(result.size_bytes)} {result.kind} model ({result.quant or result.backend}) at {result.path}")
        print(f"serve it: sagectl models add {result.name} --from {result.ref}")
    return EXIT_OK


@command("run")
def cmd_run(client: RpcClient, args: argparse.Namespace) -> int:
    from sage_client import chat

    client.call("models.show", {"name": args.model})  # an unknown model fails here, before any prompt

    def connect() -> RpcClient:
        turn = RpcClient(client.socket_path, timeout=600)
        turn.connect()
        return turn

    prompt = " ".join(args.prompt) if args.prompt else None
    return chat.run(connect, args.model, prompt, system=args.system, temperature=args.temperature, max_tokens=args.max_tokens)


@command("ps")
def cmd_ps(client: RpcClient, args: argparse.Namespace) -> int:
    result = client.call("models")
    if args.json:
        print_json(result)
        return EXIT_OK
    rows = [
        (m.id, m.backend, m.device, m.state, f"{m.slots_busy}/{m.slots_total}" if m.slots_total else "-", _until(m.keep_alive_until, m.state), m.reason)
        for m in result.models
    ]
    print(table(["NAME", "BACKEND", "DEVICE", "STATE", "SLOTS", "KEEP-ALIVE UNTIL", "REASON"], rows))
    return EXIT_OK


def _until(when: float | None, state: str) -> str:
    if state != "ready":
        return "-"
    if when is None:
        return "forever"
    return time.strftime("%H:%M:%S", time.localtime(when)) + f" ({human_duration(max(0, when - time.time()))})"


@command("load")
def cmd_load(client: RpcClient, args: argparse.Namespace) -> int:
    started = time.perf_counter()
    row = client.call("load", {"name": args.name})
    if args.json:
        print_json(row)
    else:
        print(f"{row.id}: {row.state} on {row.backend} ({row.device}) in {time.perf_counter() - started:.1f} s — {row.reason}")
    return EXIT_OK


@command("unload")
def cmd_unload(client: RpcClient, args: argparse.Namespace) -> int:
    row = client.call("unload", {"name": args.name})
    if args.json:
        print_json(row)
    else:
        print(f"{row.id}: {row.state}")
    return EXIT_OK


@command("queue")
def cmd_queue(client: RpcClient, args: argparse.Namespace) -> int:
    result = client.call("queue")
    if args.json:
        print_json(result)
        return EXIT_OK
    running = ", ".join(f"{model} {n}" for model, n in sorted(result.running.items())) or "nothing"
    print(f"policy: {result.policy}    running: {running}")
    if not result.entries:
        print("no request is waiting")
        return EXIT_OK
    rows = [
        (e.request_id, e.model, e.kind, e.priority, e.position, f"{e.waited_s:.2f}s", "?" if e.estimated_wait_s is None else f"{e.estimated_wait_s:.2f}s")
        for e in result.entries
    ]
    print(table(["REQUEST", "MODEL", "KIND", "PRIORITY", "POSITION", "WAITED", "EST. WAIT"], rows))
    return EXIT_OK


@command("policy show")
def cmd_policy_show(client: RpcClient, args: argparse.Namespace) -> int:
    result = client.call("policy.get")
    print_json(result) if args.json else print(result.policy)
    return EXIT_OK


@command("policy set")
def cmd_policy_set(client: RpcClient, args: argparse.Namespace) -> int:
    result = client.call("policy.set", {"name": args.name})
    print_json(result) if args.json else print(f"policy: {result.previous} -> {result.policy}")
    return EXIT_OK


# ----------------------------------------------------------------------------- jobs and collections

def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _elapsed(job: Any) -> str:
    if not job.started_at:
        return "-"
    return f"{(job.finished_at or time.time()) - job.started_at:.1f}s"


def _read_pipeline(path: str) -> dict[str, Any]:
    import os

    try:
        with open(path, encoding="utf-8") as f:
            return {"toml": f.read(), "source_path": os.path.abspath(path)}
    except OSError as exc:
        raise RpcCallError(ErrorCode.INVALID_PARAMS, f"cannot read {path}: {exc.strerror}") from None


def _job_exit(state: str) -> int:
    return EXIT_OK if state == "succeeded" else EXIT_ERROR


def _print_stages(detail: Any) -> None:
    rows = [(st.name, st.ops, st.kind, st.parallelism, st.items_in, st.items_out, st.errors, st.node, st.reason) for st in detail.stages]
    print(table(["STAGE", "OPS", "KIND", "PAR", "IN", "OUT", "ERR", "NODE", "PLACEMENT REASON"], rows))


def _bar(stage: Any, width: int = 24) -> str:
    done = "#" * width if stage.done else ""
    if not done:
        # No total is known ahead of a stream: the bar shows output relative to the busiest stage.
        filled = min(width - 1, stage.items_out * width // max(1, stage.items_in + 1))
        done = "#" * filled + ">"
    return f"[{done.ljust(width)}]"


def _follow(client: RpcClient, job_id: int, quiet: bool = False, results: int = 0) -> Any:
    """Watch a job to its end, drawing a progress bar per stage; Ctrl-C cancels the job."""
    tty = sys.stdout.isatty() and not quiet
    drawn = 0
    detail = None
    try:
        stream = client.stream("job.watch", {"id": job_id, "interval_s": 0.25, "results": results})
        while True:
            try:
                item = next(stream)
            except StopIteration as end:
                detail = end.value
                break
            if quiet:
                continue
            from sage_client import protocol as p
            import msgspec

            snapshot = msgspec.convert(item, p.JobDetail)
            lines = [f"job {snapshot.job.id} {snapshot.job.name}: {snapshot.job.state} {_elapsed(snapshot.job)}"]
            width = max((len(st.name) for st in snapshot.stages), default=5)
            lines += [f"  {st.name.ljust(width)} {_bar(st)} in {st.items_in:>7} out {st.items_out:>7}" + (f" err {st.errors}" if st.errors else "") for st in snapshot.stages]
            if tty:
                if drawn:
                    sys.stdout.write(f"\x1b[{drawn}F")
                sys.stdout.write("".join(line + "\x1b[K\n" for line in lines))
                sys.stdout.flush()
                drawn = len(lines)
    except KeyboardInterrupt:
        with RpcClient(client.socket_path) as other:
            other.call("job.cancel", {"id": job_id})
        print(f"\njob {job_id} cancelled", file=sys.stderr)
        raise
    return detail


@command("job submit")
def cmd_job_submit(client: RpcClient, args: argparse.Namespace) -> int:
    job = client.call("job.submit", _read_pipeline(args.file))
    if args.wait:
        detail = _follow(client, job.id, quiet=True)
        print_json(detail) if args.json else print(f"job {job.id} {detail.job.state}" + (f": {detail.job.error}" if detail.job.error else ""))
        return _job_exit(detail.job.state)
    print_json(job) if args.json else print(f"job {job.id} {job.state}")
    return EXIT_OK


@command("job run")
def cmd_job_run(client: RpcClient, args: argparse.Namespace) -> int:
    job = client.call("job.submit", _read_pipeline(args.file))
    detail = _follow(client, job.id, quiet=args.json)
    if args.json:
        print_json(detail)
    else:
        if not sys.stdout.isatty():
            _print_stages(detail)
        line = f"job {detail.job.id} {detail.job.state} in {_elapsed(detail.job)}"
        print(line + (f": {detail.job.error}" if detail.job.error else "") + (f"; results: {detail.job.result_location}" if detail.job.result_location else ""))
    return _job_exit(detail.job.state)


@command("job list")
def cmd_job_list(client: RpcClient, args: argparse.Namespace) -> int:
    result = client.call("job.list", {"state": args.state or "", "limit": args.limit})
    if args.json:
        print_json(result)
        return EXIT_OK
    rows = [(j.id, j.name, j.state, j.attempt, _when(j.created_at), _elapsed(j), j.result_location or "", _short(j.error, 50) if j.error else "") for j in result.jobs]
    print(table(["ID", "NAME", "STATE", "ATTEMPT", "CREATED", "TIME", "RESULTS", "ERROR"], rows) if rows else "no jobs")
    return EXIT_OK


@command("job show")
def cmd_job_show(client: RpcClient, args: argparse.Namespace) -> int:
    detail = client.call("job.show", {"id": args.id})
    if args.json:
        print_json(detail)
        return EXIT_OK
    job = detail.job
    print(key_values([
        ("job", f"{job.id} {job.name}"), ("state", job.state), ("attempt", job.attempt), ("executor", job.executor),
        ("created", _when(job.created_at)), ("started", _when(job.started_at)), ("finished", _when(job.finished_at)), ("time", _elapsed(job)),
        ("results", job.result_location or "-"), ("error", job.error or "-"),
    ]))
    print()
    _print_stages(detail)
    for note in detail.notes:
        print(f"note: {note}")
    return EXIT_OK


@command("job logs")
def cmd_job_logs(client: RpcClient, args: argparse.Namespace) -> int:
    stream = client.stream("job.logs", {"id": args.id, "follow": args.follow})
    end = None
    while True:
        try:
            item = next(stream)
        except StopIteration as stop:
            end = stop.value
            break
        if args.json:
            print_json(item)
        else:
            print(f"{time.strftime('%H:%M:%S', time.localtime(item['ts']))} {item['level']:<7} {item['message']}")
    return EXIT_OK if end is None else (EXIT_OK if not args.follow else _job_exit(end.job.state))


@command("job cancel")
def cmd_job_cancel(client: RpcClient, args: argparse.Namespace) -> int:
    job = client.call("job.cancel", {"id": args.id})
    print_json(job) if args.json else print(f"job {job.id} {job.state}")
    return EXIT_OK


@command("job retry")
def cmd_job_retry(client: RpcClient, args: argparse.Namespace) -> int:
    job = client.call("job.retry", {"id": args.id})
    if args.wait:
        detail = _follow(client, job.id, quiet=args.json)
        print_json(detail) if args.json else print(f"job {job.id} {detail.job.state} (attempt {detail.job.attempt})" + (f": {detail.job.error}" if detail.job.error else ""))
        return _job_exit(detail.job.state)
    print_json(job) if args.json else print(f"job {job.id} {job.state} (attempt {job.attempt})")
    return EXIT_OK


@command("collection list")
def cmd_collection_list(client: RpcClient, args: argparse.Namespace) -> int:
    result = client.call("collection.list")
    if args.json:
        print_json(result)
        return EXIT_OK
    rows = [(c.name, c.count, c.dimensions, c.model, human_bytes(c.size_bytes), _when(c.updated_at)) for c in result.collections]
    print(table(["NAME", "ITEMS", "DIMS", "MODEL", "SIZE", "UPDATED"], rows) if rows else "no collections")
    return EXIT_OK


@command("collection show")
def cmd_collection_show(client: RpcClient, args: argparse.Namespace) -> int:
    c = client.call("collection.show", {"name": args.name})
    if args.json:
        print_json(c)
        return EXIT_OK
    print(key_values([("name", c.name), ("items", c.count), ("dimensions", c.dimensions), ("model", c.model), ("size", human_bytes(c.size_bytes)),
                      ("created", _when(c.created_at)), ("updated", _when(c.updated_at)), ("path", c.path)]))
    return EXIT_OK


@command("collection drop")
def cmd_collection_drop(client: RpcClient, args: argparse.Namespace) -> int:
    c = client.call("collection.drop", {"name": args.name})
    print_json(c) if args.json else print(f"dropped collection {c.name} ({c.count} items)")
    return EXIT_OK


# Context first, the question last, and a plain system prompt: the small shipped chat model
# (SmolLM2-135M) otherwise tends to continue the numbered context instead of answering.
ASK_TEMPLATE = "Context:\n{context}\n\nUsing the context above, answer this question in one or two sentences: {question}"
ASK_SYSTEM = "You are a helpful assistant."


def _ask_reranker(client: RpcClient, args: argparse.Namespace) -> str:
    """--rerank MODEL; else the daemon's first model of kind "rerank"; "" with --no-rerank or none."""
    if args.no_rerank:
        return ""
    if args.rerank:
        return str(args.rerank)
    return next((m.id for m in client.call("models").models if m.kind == "rerank"), "")


@command("ask")
def cmd_ask(client: RpcClient, args: argparse.Namespace) -> int:
    """retrieve from a collection (hybrid by default, reranked when the daemon has a reranker) →
    prompt → generate: the RAG question, as a job."""
    retrieve: dict[str, Any] = {"op": "retrieve", "collection": args.collection, "k": args.k, "mode": args.mode}
    reranker = _ask_reranker(client, args)
    if reranker:
        retrieve["rerank_model"] = reranker
    spec = {
        "name": "ask",
        "priority": "high",  # a person is waiting for it
        "stages": [
            {"op": "from_items", "items": [{"id": "question", "question": args.question}]},
            retrieve,
            {"op": "prompt", "template": ASK_TEMPLATE},
            {"op": "generate", "model": args.model, "max_tokens": args.max_tokens, "temperature": 0.0, "system": ASK_SYSTEM, "stop": ["\n\n"]},
            {"op": "collect"},
        ],
    }
    job = client.call("job.submit", {"spec": spec})
    detail = _follow(client, job.id, quiet=True, results=1)
    if detail.job.state != "succeeded" or not detail.results:
        print(f"sagectl: ask failed: job {job.id} {detail.job.state}: {detail.job.error or 'no answer'}", file=sys.stderr)
        return EXIT_ERROR
    answer = detail.results[0]
    if args.json:
        print_json({"answer": answer.get("answer", ""), "sources": [c.get("id") for c in answer.get("contexts", [])], "job": job.id})
        return EXIT_OK
    print(answer.get("answer", "").strip())
    sources = [c.get("id") for c in answer.get("contexts", [])]
    if sources:
        print("\nsources: " + ", ".join(sources))
    return EXIT_OK


# ----------------------------------------------------------------------------- plumbing


def _short(value: Any, width: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _as_dict(value: Any) -> dict[str, Any]:
    import msgspec

    result: dict[str, Any] = msgspec.to_builtins(value)
    return result


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """--json and --socket, accepted before or after the command. Subcommands suppress their
    defaults so a value given before the command is not reset by the subparser."""
    common = argparse.ArgumentParser(add_help=False)
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    common.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table", **default)
    common.add_argument("--socket", help="the daemon's RPC socket (default: $SAGE_SOCKET, else the per-user or system socket)", **default)
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(suppress=True)
    parser = argparse.ArgumentParser(prog="sagectl", description="Control a running SAGE daemon.", parents=[_common_options(suppress=False)])
    parser.add_argument("--version", action="version", version=f"sagectl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("status", parents=[common], help="is the daemon up, where, since when")
    sub.add_parser("ping", parents=[common], help="round-trip to the daemon")
    config = sub.add_parser("config", parents=[common], help="the daemon's configuration")
    config_sub = config.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    config_sub.add_parser("show", parents=[common], help="every effective value and the layer it came from")
    sub.add_parser("nodes", parents=[common], help="this host's cores, memory, GPUs, WSL2, vLLM")
    sub.add_parser("ports", parents=[common], help="the port plan, what is free, the recommendation here")
    sub.add_parser("version", parents=[common], help="client, daemon and library versions")
    models = sub.add_parser("models", parents=[common], help="the served models; add, rm, show")
    models.add_argument("--available", action="store_true", help="models on disk (Hugging Face cache, [paths].models_dir) that can be added")
    models_sub = models.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    models_add = models_sub.add_parser("add", parents=[common], help="serve a model from now on (kept across restarts)")
    models_add.add_argument("name")
    models_add.add_argument("--from", dest="source", required=True, metavar="REF", help="a .gguf file, a sentence-transformers folder, a name from --available, or hf:OWNER/REPO[:QUANT] (pulled first)")
    models_add.add_argument("--kind", choices=["llm", "embedding", "rerank"])
    models_add.add_argument("--ctx", type=int, help="context length per sequence (tokens)")
    models_add.add_argument("--parallel", type=int, help="sequences decoded together")
    models_rm = models_sub.add_parser("rm", parents=[common], help="stop serving a model added with `models add`")
    models_rm.add_argument("name")
    models_rm.add_argument("--purge", action="store_true", help="also delete its downloaded files")
    models_sub.add_parser("show", parents=[common], help="file, size, quant, architecture, context, chat template, tool format").add_argument("name")
    run = sub.add_parser("run", aliases=["chat"], parents=[common], help="chat with a model in the terminal (one-shot with a prompt or stdin)")
    run.add_argument("model")
    run.add_argument("prompt", nargs="*", help="ask this and exit (else: an interactive chat; /bye leaves)")
    run.add_argument("--system", default="", help="a system prompt")
    run.add_argument("--temperature", type=float, default=0.8)
    run.add_argument("--max-tokens", type=int, default=None)
    pull = sub.add_parser("pull", parents=[common], help="download a model from the Hugging Face Hub (resumable)")
    pull.add_argument("ref", help="hf:OWNER/REPO[:QUANT] (a GGUF repo), hf:OWNER/REPO/FILE.gguf, or hf:OWNER/REPO (sentence-transformers)")
    sub.add_parser("ps", parents=[common], help="models with their state, slots, keep-alive and placement reason")
    load = sub.add_parser("load", parents=[common], help="load a model now")
    load.add_argument("name")
    unload = sub.add_parser("unload", parents=[common], help="unload a model now")
    unload.add_argument("name")
    sub.add_parser("queue", parents=[common], help="requests waiting, their position and estimated wait")
    policy = sub.add_parser("policy", parents=[common], help="the scheduling policy")
    policy_sub = policy.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    policy_sub.add_parser("show", parents=[common], help="the active policy")
    policy_set = policy_sub.add_parser("set", parents=[common], help="switch policy: " + ", ".join(POLICY_NAMES))
    policy_set.add_argument("name", choices=POLICY_NAMES)
    service.add_parser(sub, common)
    job = sub.add_parser("job", parents=[common], help="declarative dataflow jobs")
    job_sub = job.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    job_submit = job_sub.add_parser("submit", parents=[common], help="submit a pipeline file (TOML)")
    job_submit.add_argument("file")
    job_submit.add_argument("--wait", action="store_true", help="wait for the job to end; exit 1 unless it succeeded")
    job_run = job_sub.add_parser("run", parents=[common], help="submit and follow with a progress bar per stage (Ctrl-C cancels)")
    job_run.add_argument("file")
    job_list = job_sub.add_parser("list", parents=[common], help="jobs, newest first")
    job_list.add_argument("--state", choices=JOB_STATES)
    job_list.add_argument("--limit", type=int, default=50)
    for name, help_text in (("show", "state, stages, progress and placement of a job"), ("cancel", "cancel a queued or running job")):
        job_sub.add_parser(name, parents=[common], help=help_text).add_argument("id", type=int)
    job_logs = job_sub.add_parser("logs", parents=[common], help="a job's state changes and log lines")
    job_logs.add_argument("id", type=int)
    job_logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    job_retry = job_sub.add_parser("retry", parents=[common], help="run an ended job again (collection writes are idempotent)")
    job_retry.add_argument("id", type=int)
    job_retry.add_argument("--wait", action="store_true")
    collection = sub.add_parser("collection", parents=[common], help="vector collections written by jobs")
    collection_sub = collection.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    collection_sub.add_parser("list", parents=[common], help="collections, their size and model")
    for name, help_text in (("show", "one collection"), ("drop", "delete a collection")):
        collection_sub.add_parser(name, parents=[common], help=help_text).add_argument("name")
    ask = sub.add_parser("ask", parents=[common], help="answer a question from a collection (retrieve → prompt → generate)")
    ask.add_argument("question")
    ask.add_argument("--collection", default="docs")
    ask.add_argument("--model", default="smollm2")
    ask.add_argument("-k", type=int, default=2, help="contexts retrieved")
    ask.add_argument("--max-tokens", type=int, default=200)
    ask.add_argument("--mode", choices=["dense", "bm25", "hybrid"], default="hybrid", help="retrieval: vectors, BM25, or both fused (default)")
    reranking = ask.add_mutually_exclusive_group()
    reranking.add_argument("--rerank", metavar="MODEL", default="", help="rerank the retrieved contexts with MODEL (default: the daemon's first rerank model)")
    reranking.add_argument("--no-rerank", action="store_true", help="do not rerank, even when the daemon has a rerank model")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command in ("run", "chat") and not any(e.startswith("-") for e in extra):
            args.prompt = [*args.prompt, *extra]  # `sagectl run MODEL --temperature 0 words of a prompt`
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "service":  # manages systemd units: no daemon needed
        return service.run(args)
    command_name = {"chat": "run"}.get(args.command, args.command)  # aliases
    name = command_name + (f" {args.subcommand}" if getattr(args, "subcommand", None) else "")
    handler = COMMANDS.get(name)
    if handler is None:
        parser.parse_args([args.command, "--help"])
        return EXIT_USAGE
    try:
        with RpcClient(args.socket) as client:
            return handler(client, args)
    except DaemonNotRunning as exc:
        print(f"sagectl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RpcCallError as exc:
        print(f"sagectl: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
