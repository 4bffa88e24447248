"""`sage-daemon` and `python -m sage_daemon`: parse flags, load the config, run the daemon."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sage_client._version import __version__


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sage-daemon",
        description="SAGE daemon: OpenAI-compatible LLM and embedding serving, a control plane and dataflow jobs, in one process.",
    )
    parser.add_argument("--config", metavar="FILE", help="read this TOML file instead of /etc/sage/sage.toml and the user's file")
    parser.add_argument("--host", help="HTTP bind address (http.host)")
    parser.add_argument("--port", type=int, help="HTTP port (http.port)")
    parser.add_argument("--socket", help="RPC Unix socket path (rpc.socket)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="daemon.log_level")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="set any config key (repeatable; TOML values)")
    parser.add_argument("--check-config", action="store_true", help="validate the configuration, print where it came from, and exit")
    parser.add_argument("--version", action="version", version=f"sage-daemon {__version__}")
    return parser.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> list[tuple[str, Any, str]]:
    overrides: list[tuple[str, Any, str]] = []
    for flag, key in (("host", "http.host"), ("port", "http.port"), ("socket", "rpc.socket"), ("log_level", "daemon.log_level")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append((key, value, "--" + flag.replace("_", "-")))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"sage-daemon: --set needs SECTION.KEY=VALUE, got {item!r}", file=sys.stderr)
            raise SystemExit(2)
        overrides.append((key.strip(), value.strip(), f"--set {key.strip()}"))
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Heavy imports only after argument parsing, so --help and --version stay instant.
    from sage_daemon.core.config import ConfigError, effective_values, load_config

    overrides = overrides_from(args)
    try:
        loaded = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"sage-daemon: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        for key, value, source in effective_values(loaded):
            print(f"{key} = {value!r}    # {source}")
        return 0

    import trio

    from sage_daemon.core.logging import setup_logging
    from sage_daemon.core.ports import PortInUseError
    from sage_daemon.daemon import Daemon, StartupError

    setup_logging(loaded.config.daemon.log_level)
    try:
        trio.run(Daemon(loaded, args.config, overrides).run)
    except (StartupError, PortInUseError) as exc:
        print(f"sage-daemon: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
