"""The daemon as a real child process: signals, drain, lock, stale socket, peers, sd_notify, sagectl."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sage_client.rpc import RpcClient
from tests.conftest import DaemonProcess, isolated_flags, run_sagectl

pytestmark = pytest.mark.slow


def test_sigterm_drains_in_flight_work_then_exits_zero(spawn_daemon: Any) -> None:
    daemon: DaemonProcess = spawn_daemon()
    answer: dict[str, Any] = {}

    def slow_call() -> None:
        with RpcClient(daemon.socket) as client:
            answer["ping"] = client.call("ping", {"payload": "slow", "delay_s": 1.5})

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.5)  # the slow call is in flight
    daemon.signal(signal.SIGTERM)
    daemon.notify.wait_for("STOPPING=1")
    assert daemon.wait() == 0
    caller.join(10)
    assert answer["ping"].payload == "slow", "the in-flight request was not drained"
    assert not daemon.socket.exists()
    assert "stopping" in daemon.output() and "stopped" in daemon.output()


def test_drain_gives_up_after_the_grace(spawn_daemon: Any) -> None:
    daemon: DaemonProcess = spawn_daemon("--set", "daemon.drain_grace_s=0.5")
    caller = threading.Thread(target=lambda: _swallow(lambda: RpcClient(daemon.socket).__enter__().call("ping", {"delay_s": 30})))
    caller.start()
    time.sleep(0.5)
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert time.monotonic() - started < 10
    assert "drain grace over" in daemon.output()
    caller.join(10)


def _swallow(fn: Any) -> None:
    try:
        fn()
    except Exception:
        pass


def test_second_instance_on_the_same_runtime_dir_refuses(spawn_daemon: Any, clean_env: Path) -> None:
    first: DaemonProcess = spawn_daemon(root=clean_env / "one")
    second = subprocess.run(
        [sys.executable, "-m", "sage_daemon", *isolated_flags(clean_env / "one")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "XDG_CONFIG_HOME": str(clean_env)},
    )
    assert second.returncode == 1
    assert f"another sage-daemon (pid {first.proc.pid}) is already running" in second.stderr
    assert "Traceback" not in second.stderr
    with RpcClient(first.socket) as client:  # the first one is unharmed
        assert client.call("ping", {"payload": "ok"}).payload == "ok"


def test_stale_socket_from_a_killed_daemon_is_cleaned_up(spawn_daemon: Any, clean_env: Path) -> None:
    root = clean_env / "stale"
    first: DaemonProcess = spawn_daemon(root=root)
    first.proc.kill()
    first.proc.wait()
    assert first.socket.exists()  # SIGKILL left it behind
    second: DaemonProcess = spawn_daemon(root=root)
    with RpcClient(second.socket) as client:
        assert client.call("status").pid == second.proc.pid


def test_bad_config_stops_startup_with_one_line_and_exit_2(clean_env: Path) -> None:
    config = clean_env / "bad.toml"
    config.write_text("[http]\nport = 8888\nbind = '0.0.0.0'\n")
    result = subprocess.run([sys.executable, "-m", "sage_daemon", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0] and "http.bind: unknown key" in lines[0]
    result = subprocess.run([sys.executable, "-m", "sage_daemon", "--port", "99999"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "flag --port: http.port: expected `int` <= 65535" in result.stderr


def test_taken_port_names_the_port_and_its_holder(clean_env: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "sage_daemon", *isolated_flags(clean_env, port)], capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use by pid {os.getpid()}" in result.stderr
    assert "Traceback" not in result.stderr


def test_sd_notify_ready_status_watchdog_and_stopping(spawn_daemon: Any) -> None:
    daemon: DaemonProcess = spawn_daemon(env={"WATCHDOG_USEC": "400000"})  # ping every 0.2 s
    messages = daemon.notify.wait_for("READY=1")
    ready = next(m for m in messages if "READY=1" in m.split("\n"))
    assert "STATUS=serving on http://127.0.0.1:" in ready and f"MAINPID={daemon.proc.pid}" in ready
    before = len(daemon.notify.messages)
    watchdogs = sum(m == "WATCHDOG=1" for m in daemon.notify.collect(1.0)[before:])
    assert 3 <= watchdogs <= 7, f"expected a WATCHDOG=1 every 0.2 s, got {watchdogs} in over a second"
    daemon.signal(signal.SIGTERM)
    daemon.notify.wait_for("STOPPING=1")
    assert daemon.wait() == 0


def test_sighup_applies_live_values_and_reports_the_rest(spawn_daemon: Any, clean_env: Path) -> None:
    config = clean_env / "live.toml"
    config.write_text("[daemon]\nlog_level = 'info'\n")
    daemon: DaemonProcess = spawn_daemon("--config", str(config))
    config.write_text("[daemon]\nlog_level = 'debug'\n[http]\nmax_body_bytes = 1024\n")
    daemon.signal(signal.SIGHUP)
    daemon.notify.wait_for("RELOADING=1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with RpcClient(daemon.socket) as client:
            status = client.call("status")
            shown = {v.key: v for v in client.call("config.show").values}
        if shown["daemon.log_level"].value == "debug":
            break
        time.sleep(0.1)
    assert shown["daemon.log_level"].value == "debug" and shown["daemon.log_level"].source == str(config)
    assert shown["http.max_body_bytes"].value == 8388608  # not live: unchanged until a restart
    assert status.notes == ["config reload: http.max_body_bytes changed and needs a restart"]
    config.write_text("[daemon]\nlog_level = 'shouting'\n")
    daemon.signal(signal.SIGHUP)
    time.sleep(0.5)
    with RpcClient(daemon.socket) as client:
        assert client.call("status").state == "serving"
    assert "config reload failed" in daemon.output()


def _connect_as_nobody(path: Path) -> str:
    """Fork, drop to uid/gid 65534, talk to the daemon; returns what happened."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest, no trio, just a socket
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                with RpcClient(path, timeout=10) as client:
                    outcome = "served:" + client.call("status").state
            except Exception as exc:  # noqa: BLE001 - we report whatever happened
                outcome = f"{type(exc).__name__}:{getattr(exc, 'code', '')}:{exc}"
            os.write(write_end, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as f:
        return f.read()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
def test_foreign_uid_is_refused_with_a_typed_error(spawn_daemon: Any, clean_env: Path) -> None:
    shared_dir = Path(tempfile.mkdtemp(prefix="sage-peer-", dir="/tmp"))
    shared_dir.chmod(0o755)
    sock = shared_dir / "sage.sock"
    daemon: DaemonProcess = spawn_daemon("--socket", str(sock))
    # Mode 0600: the kernel itself keeps other users out.
    outcome = _connect_as_nobody(sock)
    assert outcome.startswith("RpcCallError:permission_denied:") and "no permission to open" in outcome
    # Even with the socket opened to everyone, SO_PEERCRED keeps the door shut.
    sock.chmod(0o666)
    outcome = _connect_as_nobody(sock)
    assert outcome.startswith("RpcCallError:permission_denied:uid 65534 may not use this daemon"), outcome
    assert "rpc peer refused" in daemon.output()
    with RpcClient(sock) as client:  # root is still served
        assert client.call("status").state == "serving"


def test_sagectl_tables_json_and_exit_codes(spawn_daemon: Any, clean_env: Path) -> None:
    daemon: DaemonProcess = spawn_daemon()
    for command in (["status"], ["ping"], ["config", "show"], ["nodes"], ["ports"], ["version"]):
        human = run_sagectl(*command, socket_path=daemon.socket)
        assert human.returncode == 0, human.stderr
        assert human.stdout.strip() and not human.stdout.lstrip().startswith("{")
        machine = run_sagectl(*command, "--json", socket_path=daemon.socket)
        assert machine.returncode == 0, machine.stderr
        json.loads(machine.stdout)
    ports = run_sagectl("ports", socket_path=daemon.socket).stdout
    assert "GATEWAY_DEFAULT" in ports and "recommended LLM port: 8001" in ports
    config = run_sagectl("config", "show", socket_path=daemon.socket).stdout.splitlines()
    assert config[0].split() == ["KEY", "VALUE", "SOURCE"]
    assert run_sagectl("--socket", str(daemon.socket), "status").returncode == 0
    assert run_sagectl("frobnicate", socket_path=daemon.socket).returncode == 2
    assert run_sagectl(socket_path=daemon.socket).returncode == 2
    daemon.stop()
    gone = run_sagectl("status", socket_path=daemon.socket)
    assert gone.returncode == 3
    assert "the daemon is not running" in gone.stderr and "start it with `sage-daemon`" in gone.stderr


def test_sighup_with_an_emptied_config_keeps_the_api_keys(spawn_daemon: Any, clean_env: Path) -> None:
    """A config file caught empty (or edited to drop every key) must not open the HTTP door on
    SIGHUP: the reload is refused with a line naming what would change. Saying `api_keys = []`
    in the file removes them on purpose."""
    import re

    import httpx

    config = clean_env / "keys.toml"
    config.write_text("[http]\napi_keys = ['sk-reload-test']\n")
    daemon: DaemonProcess = spawn_daemon("--config", str(config))
    url = re.search(r"serving on (http://\S+)", " ".join(daemon.notify.messages))
    assert url, daemon.notify.messages
    models = url.group(1) + "/v1/models"
    assert httpx.get(models).status_code == 401
    assert httpx.get(models, headers={"Authorization": "Bearer sk-reload-test"}).status_code == 200

    def reload_and_wait(text: str, expect_in_log: str) -> None:
        before = daemon.output().count(expect_in_log)
        config.write_text(text)
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while daemon.output().count(expect_in_log) == before:
            assert time.monotonic() < deadline, f"no {expect_in_log!r} after SIGHUP:\n{daemon.output()[-3000:]}"
            time.sleep(0.1)

    reload_and_wait("", "config reload refused")
    assert f"{config} is empty" in daemon.output() and "http.api_keys" in daemon.output()
    assert httpx.get(models).status_code == 401, "an empty config file removed the API keys"

    reload_and_wait("[daemon]\nlog_level = 'info'\n", "config reload refused")
    assert "remove every API key" in daemon.output()
    assert httpx.get(models).status_code == 401

    reload_and_wait("[http]\napi_keys = []\n", "config reloaded")
    assert httpx.get(models).status_code == 200  # removed on purpose
