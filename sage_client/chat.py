"""`sagectl run MODEL` (alias `chat`): a terminal chat that streams, as `ollama run` does.

Interactive on a terminal: the conversation is kept; `/bye` (or Ctrl-D) leaves, `/clear` forgets
the conversation; Ctrl-C while the model answers stops that answer (the daemon frees the slot
when the connection closes) and returns to the prompt. One-shot with a prompt argument or with
the prompt on stdin: the answer is printed and sagectl exits.

Each turn is one streamed `chat` RPC call on a fresh connection, so stopping an answer is just
closing that connection.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from sage_client.rpc import RpcClient

PROMPT = ">>> "
HELP = """Available commands:
  /clear   forget the conversation so far
  /bye     leave (Ctrl-D too)
  /?       this help
Ctrl-C stops an answer; Ctrl-D or /bye leaves."""


class ChatSession:
    def __init__(self, connect: Callable[[], RpcClient], model: str, system: str = "", temperature: float = 0.8, max_tokens: int | None = None, out: TextIO | None = None):
        self.connect = connect
        self.model = model
        self.system = system
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.out = out or sys.stdout
        self.messages: list[dict[str, str]] = []

    def clear(self) -> None:
        self.messages = []

    def ask(self, text: str) -> tuple[str, Any]:
        """Stream one answer to `out`; returns (answer, ChatEnd). Ctrl-C propagates after the
        connection is closed (the daemon stops the generation); the partial answer is kept."""
        self.messages.append({"role": "user", "content": text})
        params: dict[str, Any] = {"model": self.model, "messages": ([{"role": "system", "content": self.system}] if self.system else []) + self.messages, "temperature": self.temperature}
        if self.max_tokens:
            params["max_tokens"] = self.max_tokens
        answer: list[str] = []
        end = None
        client = self.connect()
        try:
            stream = client.stream("chat", params)
            while True:
                try:
                    delta = next(stream)
                except StopIteration as stop:
                    end = stop.value
                    break
                piece = delta.get("text", "")
                if piece:
                    answer.append(piece)
                    self.out.write(piece)
                    self.out.flush()
        finally:
            client.close()  # on Ctrl-C too: closing the connection ends the generation in the daemon
            self.messages.append({"role": "assistant", "content": "".join(answer)})
        return "".join(answer), end


def run(connect: Callable[[], RpcClient], model: str, prompt: str | None, system: str = "", temperature: float = 0.8, max_tokens: int | None = None) -> int:
    session = ChatSession(connect, model, system, temperature, max_tokens)
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    if prompt is not None:  # one-shot
        if not prompt.strip():
            print("sagectl: the prompt is empty", file=sys.stderr)
            return 2
        session.ask(prompt.strip())
        sys.stdout.write("\n")
        return 0
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # pragma: no cover - not on every platform
        pass
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            sys.stdout.write("\n")
            return 0
        except KeyboardInterrupt:
            sys.stdout.write("\nUse Ctrl-D or /bye to exit.\n")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return 0
        if text == "/clear":
            session.clear()
            print("Cleared the conversation.")
            continue
        if text in ("/?", "/help"):
            print(HELP)
            continue
        if text.startswith("/"):
            print(f"Unknown command {text.split()[0]!r}. Type /? for help.")
            continue
        try:
            session.ask(text)
            sys.stdout.write("\n\n")
        except KeyboardInterrupt:
            sys.stdout.write("\n(stopped)\n\n")
