"""A daemon shared by the end-to-end job tests (a subprocess with the real engines)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, DaemonProcess, LiveDaemon, run_sagectl

CHILD_ENV = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


class Ctl:
    """sagectl against one daemon."""

    def __init__(self, socket: Path):
        self.socket = socket

    def __call__(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return run_sagectl(*args, socket_path=self.socket, env=CHILD_ENV, timeout=timeout)

    def json(self, *args: str, timeout: float = 240) -> Any:
        done = self(*args, "--json", timeout=timeout)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def start_daemon(root: Path, *extra: str) -> DaemonProcess:
    return DaemonProcess(root, *extra, env=CHILD_ENV)


@pytest.fixture(scope="session")
def shared_daemon(live: LiveDaemon) -> DaemonProcess:
    """The session's one daemon with the real engines (tests/conftest.py)."""
    return live.process


@pytest.fixture
def ctl(shared_daemon: DaemonProcess) -> Ctl:
    return Ctl(shared_daemon.socket)


def write_pipeline(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)
