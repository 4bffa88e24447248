"""How chat and embedding engines share the CPU cores: interleaving at step granularity.

On a CPU host both engines want every core. Running a decode step and an embedding batch at the
same time makes both slower (each engine's threads fight for the same cores); instead each takes
the cores in turn for one step. An embedding batch waiting at a step boundary goes next, and a
waiting decode step goes after it, so neither side starves: E L E L while both have work.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

GateKind = Literal["llm", "embedding"]


BACKGROUND_HOLD_S = 0.5  # the longest a background batch waits for an interactive first token
_PAUSE_SLICE_S = 0.05  # how often a paused outside worker looks at its cancel flag


class CpuGate:
    """One step at a time on the cores. Background embedding batches (job stages) also wait while
    an interactive LLM request is waiting for its first token (`interactive_pending`), for at most
    BACKGROUND_HOLD_S, and a background batch already running yields the cores between two of its
    layers' blocks to such a request's step, so a flood of background work does not sit between a chat
    and its answer."""

    def __init__(self, embedding_first: bool = True):
        self.embedding_first = embedding_first
        self.interactive_pending = 0
        self._cond = threading.Condition()
        self._held = False
        self._last: GateKind | None = None
        self._waiting: dict[GateKind, int] = {"llm": 0, "embedding": 0}
        self.steps: dict[GateKind, int] = {"llm": 0, "embedding": 0}
        self.held_s: dict[GateKind, float] = {"llm": 0.0, "embedding": 0.0}  # time each kind held the cores
        self._held_since = 0.0

    def view(self, kind: GateKind) -> _GateView:
        """The StepGate an engine of this kind holds around each step."""
        return _GateView(self, kind)

    def _my_turn(self, kind: GateKind) -> bool:
        if self._held:
            return False
        other: GateKind = "embedding" if kind == "llm" else "llm"
        if not self._waiting[other]:
            return True
        if self.embedding_first and kind == "llm" and self._last != "embedding":
            return False  # an embedding batch is waiting: it goes before this decode step
        return self._last != kind  # both waiting: take turns

    def set_interactive_pending(self, count: int) -> None:
        with self._cond:
            self.interactive_pending = count
            self._cond.notify_all()

    def acquire(self, kind: GateKind, background: bool = False) -> None:
        with self._cond:
            hold_until = time.monotonic() + BACKGROUND_HOLD_S
            while background and kind == "embedding" and self.interactive_pending > 0:
                left = hold_until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._waiting[kind] += 1
            try:
                while not self._my_turn(kind):
                    self._cond.wait()
            finally:
                self._waiting[kind] -= 1
            self._held = True
            self._last = kind
            self.steps[kind] += 1
            self._held_since = time.monotonic()

    def pause_for_interactive(self, cancelled: threading.Event | None = None, max_s: float = BACKGROUND_HOLD_S) -> float:
        """Background work outside the engines (a model pull) calls this between two of its
        chunks, on its own thread: it returns once no interactive request waits for its first
        token, after `max_s` at most (so a steady stream of chats slows the work, never stops
        it), or when `cancelled` is set. Returns the seconds it waited."""
        start = time.monotonic()
        with self._cond:
            while self.interactive_pending > 0 and not (cancelled is not None and cancelled.is_set()):
                left = start + max_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, _PAUSE_SLICE_S))
        return time.monotonic() - start

    def yield_to_interactive(self, kind: GateKind) -> None:
        """The holder (`kind`), between two parts of a background step: if an interactive request
        waits for its first token and the other engine waits for the cores, it takes one step
        now instead of after the whole batch (a batch of 64 job chunks holds the cores ~0.4 s)."""
        other: GateKind = "embedding" if kind == "llm" else "llm"
        if not (self.interactive_pending and self._waiting[other]):  # racy read: the next layer checks again
            return
        self.release()
        # Back as background work: it waits until the first token is out (bounded by
        # BACKGROUND_HOLD_S), rather than taking every other step from the chat.
        self.acquire(kind, background=True)

    def release(self) -> None:
        with self._cond:
            if self._held and self._last is not None:
                self.held_s[self._last] += time.monotonic() - self._held_since
            self._held = False
            self._cond.notify_all()


class _GateView:
    def __init__(self, gate: CpuGate, kind: GateKind):
        self._gate = gate
        self._kind = kind

    def acquire(self, background: bool = False) -> None:
        self._gate.acquire(self._kind, background)

    def release(self) -> None:
        self._gate.release()

    def yield_to_interactive(self) -> None:
        self._gate.yield_to_interactive(self._kind)
