"""`sagectl service install|uninstall|status`: the systemd units of this installation.

The unit files in `systemd/` (shipped as `sage_client/systemd`) are templates: `render()` puts
this installation's daemon into `ExecStart=` (the `sage-daemon` next to the running Python, else
`python -m sage_daemon`) and loosens `ProtectHome=` when the installation lives in a home
directory, which `ProtectHome=yes` would hide from the service. Nothing here needs the daemon.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import msgspec

Scope = Literal["user", "system"]
UNITS = ("sage.service", "sage.socket", "sage-http.socket")
SOCKETS = ("sage.socket", "sage-http.socket")
SYSTEMD_RUN_DIR = Path("/run/systemd/system")  # exists only when systemd is PID 1 (sd_booted(3))
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSUSERS_FILE = Path("/etc/sysusers.d/sage.conf")
_HOMES = ("/home/", "/root/", "/run/user/")
EXIT_OK, EXIT_ERROR = 0, 1


class ServiceError(Exception):
    """The service command cannot go on; the message says why and what to do instead."""


def user_unit_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def template(scope: Scope, name: str) -> str:
    path = importlib.resources.files("sage_client") / "systemd"
    for part in (["user"] if scope == "user" else []) + name.split("/"):
        path = path / part
    return path.read_text(encoding="utf-8")


def daemon_command() -> list[str]:
    """How this installation starts the daemon: its console script, else the module."""
    script = Path(sys.executable).parent / "sage-daemon"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "sage_daemon"]


def _quote(word: str) -> str:
    """One ExecStart= word: systemd expands % and $, and splits on spaces unless quoted."""
    word = word.replace("%", "%%").replace("$", "$$")
    if any(c in word for c in " \t\"'\\;"):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render(scope: Scope, command: list[str], pythonpath: str | None = None) -> dict[str, str]:
    """Unit name → text, with ExecStart= set to `command`."""
    units = {name: template(scope, name) for name in UNITS}
    service = units["sage.service"]
    exec_start = "ExecStart=" + " ".join(_quote(word) for word in command)
    service, replaced = re.subn(r"(?m)^ExecStart=.*$", lambda _: exec_start, service)
    assert replaced == 1, "the sage.service template must have exactly one ExecStart= line"
    if pythonpath:
        # The daemon is importable here only through PYTHONPATH: give the service the same.
        escaped = pythonpath.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
        service = service.replace(exec_start, f'Environment="PYTHONPATH={escaped}"\n{exec_start}')
    installed_in_home = any((p + "/").startswith(_HOMES) for p in [*command, *(pythonpath or "").split(os.pathsep)] if p)
    if scope == "system" and installed_in_home:
        service = re.sub(r"(?m)^ProtectHome=yes$", "# This installation lives under a home directory: read-only, not hidden.\nProtectHome=read-only", service)
    units["sage.service"] = service
    return units


def systemd_missing(scope: Scope) -> str | None:
    """Why systemctl cannot manage units here, or None when it can."""
    if not SYSTEMD_RUN_DIR.is_dir():
        return f"systemd is not running on this machine (no {SYSTEMD_RUN_DIR})"
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    if scope == "system" and os.geteuid() != 0:
        return "a system service needs root: run `sudo sagectl service install --system`, or install a user service with --user"
    return None


class Runner:
    """Runs (or, dry, only prints) systemctl and friends, and says what it did."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str] | None:
        print(("would run: " if self.dry_run else "ran: ") + " ".join(command))
        if self.dry_run:
            return None
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise ServiceError(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
        return result


def _systemctl(scope: Scope) -> list[str]:
    return ["systemctl", "--user"] if scope == "user" else ["systemctl"]


def _unit_dir(scope: Scope, unit_dir: str | None) -> Path:
    if unit_dir:
        return Path(unit_dir).expanduser()
    return user_unit_dir() if scope == "user" else SYSTEM_UNIT_DIR


def install(scope: Scope, unit_dir: str | None = None, *, now: bool = False, dry_run: bool = False) -> int:
    only_files = unit_dir is not None  # --unit-dir: write the files, leave systemctl alone
    if not only_files and (reason := systemd_missing(scope)):
        raise ServiceError(f"{reason}. Run `sage-daemon` by hand instead, or write the unit files only with --unit-dir DIR")
    directory = _unit_dir(scope, unit_dir)
    units = render(scope, daemon_command(), os.environ.get("PYTHONPATH") or None)
    runner = Runner(dry_run)
    flag = "--user " if scope == "user" else ""
    if scope == "system" and not only_files:
        sysusers = template("system", "sysusers.d/sage.conf")
        print(f"{'would write' if dry_run else 'wrote'} {SYSUSERS_FILE} (the sage user and group)")
        if not dry_run:
            SYSUSERS_FILE.parent.mkdir(parents=True, exist_ok=True)
            SYSUSERS_FILE.write_text(sysusers, encoding="utf-8")
        runner.run("systemd-sysusers", str(SYSUSERS_FILE))
    if not dry_run:
        directory.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        path = directory / name
        if dry_run:
            print(f"would write {path}:\n" + "\n".join("    " + line for line in text.splitlines()))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    print(f"ExecStart: {' '.join(daemon_command())}")
    if only_files:
        print(f"systemctl left alone (--unit-dir); to use them: systemctl {flag}daemon-reload && systemctl {flag}enable --now {' '.join(SOCKETS)}")
        print(f"undo: sagectl service uninstall --{scope} --unit-dir {directory}")
        return EXIT_OK
    runner.run(*_systemctl(scope), "daemon-reload")
    runner.run(*_systemctl(scope), "enable", *(["--now"] if now else []), *SOCKETS)
    where = "the RPC socket and 127.0.0.1:8888"
    started = f"listening now on {where}" if now else f"listening from the next boot/login on {where}; start now with `systemctl {flag}start {' '.join(SOCKETS)}`"
    print(f"sage is installed as a {scope} service, {started}; the daemon starts on the first request.")
    if scope == "system":
        print("let people use it: usermod -aG sage NAME (then they log in again)")
    print(f"logs: journalctl {flag}-u sage    status: sagectl service status --{scope}")
    print(f"undo: sagectl service uninstall --{scope}")
    return EXIT_OK


def uninstall(scope: Scope, unit_dir: str | None = None, *, dry_run: bool = False) -> int:
    only_files = unit_dir is not None
    if not only_files and (reason := systemd_missing(scope)):
        raise ServiceError(f"{reason}. Remove the unit files by hand, or with --unit-dir DIR")
    directory = _unit_dir(scope, unit_dir)
    runner = Runner(dry_run)
    if not only_files:
        runner.run(*_systemctl(scope), "disable", "--now", *SOCKETS, "sage.service", check=False)
    removed = 0
    for name in UNITS:
        path = directory / name
        if path.exists():
            removed += 1
            print(f"{'would remove' if dry_run else 'removed'} {path}")
            if not dry_run:
                path.unlink()
    if not only_files:
        runner.run(*_systemctl(scope), "daemon-reload")
    if removed == 0:
        print(f"no sage units in {directory}: nothing to remove")
    kept = "/var/lib/sage, /var/cache/sage, /var/log/sage and /etc/sage" if scope == "system" else "~/.local/share/sage, ~/.local/state/sage and ~/.config/sage"
    print(f"kept the daemon's data ({kept}) and, for a system service, the sage user")
    return EXIT_OK


class UnitStatus(msgspec.Struct):
    name: str
    path: str
    installed: bool
    enabled: str
    active: str


def status(scope: Scope, unit_dir: str | None = None, as_json: bool = False) -> int:
    directory = _unit_dir(scope, unit_dir)
    reason = systemd_missing(scope) if unit_dir is None else "--unit-dir given"
    rows = []
    for name in UNITS:
        enabled = active = "unknown"
        if reason is None:
            enabled = subprocess.run([*_systemctl(scope), "is-enabled", name], capture_output=True, text=True).stdout.strip() or "unknown"
            active = subprocess.run([*_systemctl(scope), "is-active", name], capture_output=True, text=True).stdout.strip() or "unknown"
        path = directory / name
        rows.append(UnitStatus(name, str(path), path.exists(), enabled, active))
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode({"scope": scope, "systemd": reason or "available", "units": rows})).decode() + "\n")
    else:
        for row in rows:
            print(f"{row.name:18} {'installed' if row.installed else 'not installed':14} enabled={row.enabled:10} active={row.active:10} {row.path}")
        if reason:
            print(f"(systemctl not asked: {reason})")
    return EXIT_OK if all(row.installed for row in rows) else EXIT_ERROR


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    service = sub.add_parser("service", parents=[common], help="install the daemon as a systemd service (no daemon needed)")
    service_sub = service.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    for name, text in (("install", "write the units, daemon-reload, enable the sockets"), ("uninstall", "disable and remove the units"), ("status", "are the units installed, enabled, active")):
        parser = service_sub.add_parser(name, parents=[common], help=text)
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument("--user", dest="scope", action="store_const", const="user", help="a user service (systemctl --user; the default)")
        scope.add_argument("--system", dest="scope", action="store_const", const="system", help="a system service (root; a sage user)")
        parser.add_argument("--unit-dir", metavar="DIR", help="write/remove/look at the units in DIR and leave systemctl alone")
        if name != "status":
            parser.add_argument("--dry-run", action="store_true", help="print what would be written and run, change nothing")
        if name == "install":
            parser.add_argument("--now", action="store_true", help="start listening now, not only from the next boot/login")


def run(args: argparse.Namespace) -> int:
    scope: Scope = getattr(args, "scope", None) or "user"
    try:
        if args.subcommand == "install":
            return install(scope, args.unit_dir, now=args.now, dry_run=args.dry_run)
        if args.subcommand == "uninstall":
            return uninstall(scope, args.unit_dir, dry_run=args.dry_run)
        if args.subcommand == "status":
            return status(scope, args.unit_dir, as_json=getattr(args, "json", False))
    except ServiceError as exc:
        print(f"sagectl service: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print("sagectl service: say install, uninstall or status", file=sys.stderr)
    return 2
