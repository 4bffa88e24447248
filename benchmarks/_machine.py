"""What every benchmark shares: the machine line it prints first (figures are only comparable on
one machine), and starting servers on free ports."""

from __future__ import annotations

import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from sage_daemon.core.nodes import cpu_model_name  # noqa: E402


def describe() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = " load %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = ""
    return f"machine: {cpu_model_name()}, {cores} cores, Python {platform.python_version()}, {platform.system()} {platform.release()};{load}"


def print_header(title: str) -> None:
    print(f"# {title}")
    print(describe())
    print("command: " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:]))
    print()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    """Until GET url/health answers 200; a clear error naming the log if the server dies or stalls."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not healthy after {timeout} s; see {log}")


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 60) -> None:
    """SIGTERM (a daemon drains), then SIGKILL after `grace_s`; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
