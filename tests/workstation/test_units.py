"""The systemd units: rendered by `sagectl service install`, checked by the real `systemd-analyze`
(verify, and the offline security score), and `sagectl service` itself."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from sage_client import service
from sage_client.paths import SOCKET_NAME, SYSTEM_RUNTIME_DIR
from tests.conftest import REPO, run_sagectl
from tests.workstation.conftest import needs_systemd_analyze

UNITS = REPO / "systemd"


def unit_options(path: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, values in order (systemd keys repeat)."""
    return unit_options_of(path.read_text())


def unit_options_of(text: str) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            options.setdefault(key.strip(), []).append(value.strip())
    return options


def render_with_sagectl(tmp_path: Path, scope: str) -> Path:
    out = tmp_path / scope
    result = run_sagectl("service", "install", f"--{scope}", "--unit-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out / 'sage.service'}" in result.stdout and f"undo: sagectl service uninstall --{scope}" in result.stdout
    return out


def analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@needs_systemd_analyze
def test_rendered_system_units_pass_verify(tmp_path: Path) -> None:
    out = render_with_sagectl(tmp_path, "system")
    exec_start = unit_options(out / "sage.service")["ExecStart"]
    assert exec_start == [" ".join(service.daemon_command())]
    assert Path(exec_start[0].split()[0]).exists()
    result = analyze("verify", *(str(out / name) for name in service.UNITS))
    assert result.returncode == 0, result.stderr + result.stdout


@needs_systemd_analyze
def test_rendered_user_units_pass_verify(tmp_path: Path) -> None:
    out = render_with_sagectl(tmp_path, "user")
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    result = analyze("verify", "--user", *(str(out / name) for name in service.UNITS), env={"XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0, result.stderr + result.stdout


def exposure(unit: Path) -> tuple[float, str]:
    result = analyze("security", "--offline=true", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    return float(match.group(1)), match.group(2)


@needs_systemd_analyze
def test_system_service_security_exposure_is_ok(tmp_path: Path) -> None:
    score, verdict = exposure(UNITS / "sage.service")
    assert score <= 2.5 and verdict == "OK", f"exposure {score} {verdict}"
    # An installation under /home gets ProtectHome=read-only: still OK.
    home = tmp_path / "sage.service"
    home.write_text(service.render("system", ["/home/someone/venv/bin/sage-daemon"])["sage.service"])
    assert "ProtectHome=read-only" in home.read_text()
    score, verdict = exposure(home)
    assert score <= 2.5 and verdict == "OK", f"exposure with ProtectHome=read-only {score} {verdict}"


def test_units_match_the_daemon_and_the_issue() -> None:
    system = unit_options(UNITS / "sage.service")
    for key, value in {
        "Type": "notify", "Restart": "on-failure", "User": "sage", "StateDirectory": "sage", "RuntimeDirectory": "sage",
        "CacheDirectory": "sage", "LogsDirectory": "sage", "ConfigurationDirectory": "sage", "NoNewPrivileges": "yes",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet": "", "MemoryDenyWriteExecute": "no",
        "ExecReload": "/bin/kill -HUP $MAINPID", "RuntimeDirectoryPreserve": "yes",
    }.items():
        assert system.get(key, [None])[0] == value, f"sage.service {key}={system.get(key)}"
    assert "@system-service" in system["SystemCallFilter"]
    defaults = tomllib.loads((REPO / "etc" / "sage.toml").read_text())
    for unit in (UNITS / "sage.service", UNITS / "user" / "sage.service"):
        options = unit_options(unit)
        assert float(options["TimeoutStopSec"][0].rstrip("s")) > defaults["daemon"]["drain_grace_s"], f"{unit}: the stop timeout would cut the drain"
        assert options["WatchdogSec"] and options["Type"] == ["notify"] and options["Restart"] == ["on-failure"]
        assert options["Sockets"] == ["sage.socket sage-http.socket"]
    # The names the daemon looks for, and the socket paths the client looks at.
    assert unit_options(UNITS / "sage.socket")["ListenStream"] == [str(SYSTEM_RUNTIME_DIR / SOCKET_NAME)]
    assert unit_options(UNITS / "user" / "sage.socket")["ListenStream"] == [f"%t/sage/{SOCKET_NAME}"]
    for directory in (UNITS, UNITS / "user"):
        assert unit_options(directory / "sage.socket")["FileDescriptorName"] == ["rpc"]
        assert unit_options(directory / "sage-http.socket")["FileDescriptorName"] == ["http"]
        assert unit_options(directory / "sage-http.socket")["ListenStream"] == ["127.0.0.1:8888"]
    sysusers = [line.split() for line in (UNITS / "sysusers.d" / "sage.conf").read_text().splitlines() if line and not line.startswith("#")]
    assert sysusers[0][:3] == ["u", "sage", "-"], "the static user and group that User=sage and SocketGroup=sage name"


def test_exec_start_quotes_and_falls_back_to_the_module() -> None:
    units = service.render("user", ["/opt/my venv/bin/python", "-m", "sage_daemon"], pythonpath="/src/100%")
    text = units["sage.service"]
    assert 'ExecStart="/opt/my venv/bin/python" -m sage_daemon' in text
    assert 'Environment="PYTHONPATH=/src/100%%"' in text
    assert unit_options_of(service.render("system", ["/usr/bin/sage-daemon"])["sage.service"])["ProtectHome"] == ["yes"]


def test_install_refuses_where_systemd_is_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(service, "SYSTEMD_RUN_DIR", tmp_path / "no-systemd")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    code = service.run(service_args("install", "--user"))
    assert code == 1
    assert not (tmp_path / "config" / "systemd").exists(), "nothing may be written when refusing"
    if not Path("/run/systemd/system").is_dir():  # the real check, through sagectl
        result = run_sagectl("service", "install", "--system")
        assert result.returncode == 1
        assert "systemd is not running on this machine" in result.stderr and "--unit-dir" in result.stderr


def service_args(*argv: str):  # noqa: ANN201
    from sage_client.cli import build_parser

    return build_parser().parse_args(["service", *argv])


def test_install_and_uninstall_drive_systemctl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With systemd present (a recording systemctl stands in for it): write, daemon-reload, enable; and back."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "systemctl"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    (tmp_path / "run-systemd").mkdir()
    monkeypatch.setattr(service, "SYSTEMD_RUN_DIR", tmp_path / "run-systemd")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    unit_dir = tmp_path / "config" / "systemd" / "user"

    assert service.run(service_args("install", "--user", "--now")) == 0
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(service.UNITS)
    assert calls.read_text().splitlines() == ["--user daemon-reload", "--user enable --now sage.socket sage-http.socket"]
    said = capsys.readouterr().out
    assert "ran: systemctl --user enable --now sage.socket sage-http.socket" in said and "undo: sagectl service uninstall --user" in said

    calls.unlink()
    assert service.run(service_args("uninstall", "--user")) == 0
    assert list(unit_dir.iterdir()) == []
    assert calls.read_text().splitlines() == ["--user disable --now sage.socket sage-http.socket sage.service", "--user daemon-reload"]


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    result = run_sagectl("service", "install", "--system", "--unit-dir", str(tmp_path / "units"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would write" in result.stdout and "ExecStart=" in result.stdout
    assert not (tmp_path / "units").exists()


def test_sagectl_service_does_not_need_the_daemon(tmp_path: Path) -> None:
    out = render_with_sagectl(tmp_path, "user")
    env = {"SAGE_SOCKET": str(tmp_path / "nobody-home.sock")}
    status = run_sagectl("service", "status", "--user", "--unit-dir", str(out), "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert '"installed": true' in status.stdout
    gone = run_sagectl("service", "uninstall", "--user", "--unit-dir", str(out), env=env)
    assert gone.returncode == 0 and not any(out.iterdir())
    assert run_sagectl("service", "status", "--user", "--unit-dir", str(out), env=env).returncode == 1
