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
from sage_client.output import human_bytes, human_duration, key_values, print_json, table
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
    ]
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
    result = client.call("models")
    if args.json:
        print_json(result)
        return EXIT_OK
    rows = [(m.id, m.kind, m.backend, m.device, m.state, m.n_ctx or "", m.dimensions or "") for m in result.models]
    print(table(["NAME", "KIND", "BACKEND", "DEVICE", "STATE", "CONTEXT", "DIMS"], rows))
    return EXIT_OK


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


# ----------------------------------------------------------------------------- plumbing


def _short(value: Any, width: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _as_dict(value: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(value)


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
    sub.add_parser("models", parents=[common], help="the configured models")
    sub.add_parser("ps", parents=[common], help="models with their state, slots, keep-alive and placement reason")
    load = sub.add_parser("load", parents=[common], help="load a model now")
    load.add_argument("name")
    unload = sub.add_parser("unload", parents=[common], help="unload a model now")
    unload.add_argument("name")
    sub.add_parser("queue", parents=[common], help="requests waiting, their position and estimated wait")
    policy = sub.add_parser("policy", parents=[common], help="the scheduling policy")
    policy_sub = policy.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    policy_sub.add_parser("show", parents=[common], help="the active policy")
    policy_set = policy_sub.add_parser("set", parents=[common], help="switch policy: fifo, priority, slo, hybrid")
    policy_set.add_argument("name", choices=["fifo", "priority", "slo", "hybrid"])
    service.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "service":  # manages systemd units: no daemon needed
        return service.run(args)
    name = args.command + (f" {args.subcommand}" if getattr(args, "subcommand", None) else "")
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
