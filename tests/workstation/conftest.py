"""Workstation-test helpers: the daemon under `systemd-socket-activate`, a free port, tool checks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, ChildProcess, NotifyListener, isolated_flags

needs_socket_activate = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing: apt-get install systemd"
)
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing: apt-get install systemd")


def free_port() -> int:
    """An ephemeral port the kernel just handed out (and took back)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a daemon child: this checkout first on sys.path, no SAGE_* or systemd
    variables from outside, an empty config dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGE_") and not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_", "JOURNAL_"))}
    env.update({"PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(root / "xdg-config"), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    env.update(extra)
    return env


class ActivatedDaemon(ChildProcess):
    """`systemd-socket-activate` holding the HTTP port and the RPC socket; it execs the daemon on
    the first connection to either, as systemd does with sage.socket (pid stays the same)."""

    def __init__(self, root: Path, *extra: str, fdnames: str | None = "http:rpc", env: dict[str, str] | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = root / "sage.sock"
        self.notify = NotifyListener(root / "notify.sock")
        environment = child_env(root, NOTIFY_SOCKET=str(self.notify.path), **(env or {}))
        command = ["systemd-socket-activate", "-l", f"127.0.0.1:{self.port}", "-l", str(self.socket)]
        if fdnames is not None:
            command.append(f"--fdname={fdnames}")
        # The tool passes only the variables named with -E to the child.
        command += [f"-E{name}={value}" for name, value in environment.items() if name in _PASSED]
        command += [sys.executable, "-m", "sage_daemon", *isolated_flags(root), *extra]
        self.log_path = root / "activate.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=root)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.exists() and "Listening on 127.0.0.1" in self.output():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"systemd-socket-activate did not listen:\n{self.output()}")

    def daemon_started(self) -> bool:
        """True once the tool has exec'd the daemon in its own process."""
        return "Execing" in self.output()



_PASSED = {"SAGE_API_KEY", "TOKENIZERS_PARALLELISM", "PATH", "HOME", "PYTHONPATH", "XDG_CONFIG_HOME", "PYTHONUNBUFFERED", "HF_HUB_OFFLINE", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "VIRTUAL_ENV"}


@pytest.fixture
def activate(clean_env: Path):  # noqa: ANN201
    started: list[ActivatedDaemon] = []

    def start(*extra: str, **kwargs: object) -> ActivatedDaemon:
        daemon = ActivatedDaemon(clean_env / f"a{len(started)}", *extra, **kwargs)  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
