"""`sagectl run` in a pseudo-terminal against the real daemon and SmolLM2: a multi-turn chat
that keeps the conversation, `/bye`, Ctrl-C in the middle of an answer (the generation stops and
its slot is freed), and the one-shot forms (an argument, stdin)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

from tests.conftest import REPO, DaemonProcess, run_sagectl


class Terminal:
    """`sagectl ARGS` on a pseudo-terminal: type into it, read what it prints."""

    def __init__(self, *args: str, socket_path: Path):
        self.master, slave = pty.openpty()
        env = {**os.environ, "SAGE_SOCKET": str(socket_path), "TERM": "dumb"}
        def controlling_terminal() -> None:  # as a shell would: Ctrl-C on the terminal is SIGINT for us
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([sys.executable, "-m", "sage_client.cli", *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True, preexec_fn=controlling_terminal)
        os.close(slave)
        self.seen = ""

    def read_until(self, pattern: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in:\n{self.seen[-2000:]}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:
                    break
        return self.seen

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)


def running_requests(daemon: DaemonProcess) -> int:
    rows = run_sagectl("ps", "--json", socket_path=daemon.socket).stdout
    import json

    return sum(m["slots_busy"] for m in json.loads(rows)["models"])


def test_interactive_chat_keeps_the_conversation_stops_on_ctrl_c_and_leaves_on_bye(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "d", env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    try:
        term = Terminal("run", "smollm2", "--temperature", "0", "--system", "You are a helpful assistant.", socket_path=daemon.socket)
        term.read_until(">>> ")
        term.type("What is the capital of France?\n")
        first = term.read_until(r"(?s)France\?.*\n.*>>> ")
        assert "Paris" in first.split("France?", 1)[1]
        mark = len(term.seen)
        term.type("Write a very long story about a dragon, with many chapters.\n")
        term.read_until(r"(?s).{200}", timeout=60)  # it is answering
        time.sleep(1.0)
        term.type("\x03")  # Ctrl-C mid-answer
        term.read_until(r"\(stopped\)")
        assert ">>> " not in term.seen[mark:].split("(stopped)")[0]
        deadline = time.monotonic() + 10
        while running_requests(daemon) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running_requests(daemon) == 0, "the stopped generation still holds a slot"
        term.read_until(r"\(stopped\)\s*\n+>>> ")
        term.type("/bye\n")
        assert term.wait() == 0
    finally:
        daemon.stop()


def test_one_shot_from_an_argument_and_from_stdin(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "d", env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    try:
        env = {**os.environ, "SAGE_SOCKET": str(daemon.socket)}
        argv = [sys.executable, "-m", "sage_client.cli"]
        by_arg = subprocess.run([*argv, "run", "smollm2", "--temperature", "0", "--max-tokens", "20", "--system", "You are a helpful assistant.", "What", "is", "the", "capital", "of", "France?"], capture_output=True, text=True, env=env, timeout=120)
        assert by_arg.returncode == 0 and "Paris" in by_arg.stdout, by_arg
        by_stdin = subprocess.run([*argv, "chat", "smollm2", "--temperature", "0", "--max-tokens", "20", "--system", "You are a helpful assistant."], input="What is the capital of France?", capture_output=True, text=True, env=env, timeout=120)
        assert by_stdin.returncode == 0 and "Paris" in by_stdin.stdout, by_stdin
        unknown = subprocess.run([*argv, "run", "nope", "hi"], capture_output=True, text=True, env=env, timeout=60)
        assert unknown.returncode == 1 and "nope" in unknown.stderr
    finally:
        daemon.stop()
