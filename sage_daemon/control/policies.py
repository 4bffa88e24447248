"""Scheduling policies: plain objects, stepped with the queue state, returning decisions.

Like vLLM v1's scheduler, a policy owns no I/O and no clock: the control plane hands it a
`QueueState` (what waits, what is free, the time) and carries out what it returns. That keeps
every ordering, batching and starvation rule testable without a model.

- `fifo`: one arrival-ordered queue for everything, one request per engine call, head-of-line
  blocking: the naive baseline.
- `priority`: per model, priority then arrival; one request per engine call.
- `slo`: per model, earliest deadline first (requests without a deadline get the class's
  default SLO), ordered by slack; embeddings batched.
- `hybrid` (default): embeddings batched per model (size, token budget, max wait) and
  interleaved with decode steps by the CPU gate; LLM admission by priority, then deadline, then
  arrival; background work only fills capacity interactive work leaves; aging keeps background
  work from starving.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sage_daemon.control.api import Priority, RequestKind, RequestMeta


BATCHED_KINDS = frozenset({"embedding", "rerank"})


@dataclass(eq=False)
class Ticket:
    """One request waiting for the control plane. `size` is texts for embeddings, 1 for LLM."""

    id: str
    model: str
    kind: RequestKind
    meta: RequestMeta
    enqueued_at: float
    size: int = 1
    tokens: int = 0
    payload: Any = None  # what the executor needs (texts, the prepared generation request)
    outcome: Any = None  # set by the plane when admitted/done/failed

    @property
    def is_batched(self) -> bool:
        """Embedding and rerank requests run in batches the policy forms; chat and completions
        are admitted one by one into an engine's sequence slots."""
        return self.kind in BATCHED_KINDS

    @property
    def deadline_at(self) -> float | None:
        return None if self.meta.deadline_s is None else self.enqueued_at + self.meta.deadline_s


@dataclass
class QueueState:
    now: float
    waiting: list[Ticket]  # every waiting ticket, in arrival order
    free_slots: dict[str, int]  # LLM model -> free sequence slots
    embedding_idle: dict[str, bool]  # embedding model -> can take another batch now
    embedding_running: dict[str, int] = field(default_factory=dict)  # embedding model -> batches in flight


@dataclass(frozen=True)
class Admit:
    ticket: Ticket


@dataclass(frozen=True)
class RunBatch:
    model: str
    tickets: tuple[Ticket, ...]


@dataclass(frozen=True)
class Expire:
    ticket: Ticket


Decision = Admit | RunBatch | Expire


@dataclass
class StepResult:
    decisions: list[Decision] = field(default_factory=list)
    wake_at: float | None = None  # step again at this time even if nothing else happens

    def wake(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)


@dataclass(frozen=True)
class BatchLimits:
    max_texts: int = 64
    max_tokens: int = 16384
    max_wait_s: float = 0.005


@dataclass(frozen=True)
class PolicySettings:
    batch: BatchLimits = BatchLimits()
    reserved_interactive_slots: int = 1  # LLM slots background work may not take
    aging_s: float = 10.0  # a waiting request rises one priority level per aging period
    default_slo_s: dict[str, float] = field(default_factory=lambda: {"chat": 10.0, "completion": 10.0, "embedding": 1.0, "rerank": 1.0})


class Policy(Protocol):
    name: str

    def step(self, state: QueueState) -> StepResult: ...


# ----------------------------------------------------------------------------- shared rules


def expire_overdue(state: QueueState, result: StepResult) -> list[Ticket]:
    """Tickets past their deadline leave with an error; the rest are returned. Deadlines wake the plane."""
    alive = []
    for ticket in state.waiting:
        deadline = ticket.deadline_at
        if deadline is not None and state.now >= deadline:
            result.decisions.append(Expire(ticket))
        else:
            alive.append(ticket)
            if deadline is not None:
                result.wake(deadline)
    return alive


def effective_priority(ticket: Ticket, now: float, aging_s: float) -> int:
    """Priority after aging: a request that waited aging_s rises one level (never above HIGH)."""
    level = int(ticket.meta.priority)
    if aging_s > 0 and level > Priority.HIGH:
        level = max(int(Priority.HIGH), level - int((now - ticket.enqueued_at) // aging_s))
    return level


def by_model(tickets: Iterable[Ticket]) -> dict[str, list[Ticket]]:
    groups: dict[str, list[Ticket]] = {}
    for ticket in tickets:
        groups.setdefault(ticket.model, []).append(ticket)
    return groups


def admit_llm(tickets: list[Ticket], free: int, result: StepResult, reserve_for_background: int = 0, background: Callable[[Ticket], bool] = lambda t: False) -> None:
    """Admit tickets (already in policy order) into `free` slots; background ones keep `reserve` free."""
    for ticket in tickets:
        if free <= 0:
            break
        if background(ticket) and free <= reserve_for_background:
            continue
        result.decisions.append(Admit(ticket))
        free -= 1


def form_batch(tickets: list[Ticket], limits: BatchLimits, now: float, result: StepResult, only_full: bool = False) -> tuple[Ticket, ...] | None:
    """Dynamic batching: take tickets (in policy order) up to the text and token budgets. Dispatch at
    once when full; otherwise wait for more until the oldest has waited max_wait_s. With
    `only_full` (a batch is already running), only a full batch goes: it queues behind the
    running one at the engine, while a partial one is better off collecting more requests."""
    if not tickets:
        return None
    batch: list[Ticket] = []
    texts = tokens = 0
    for ticket in tickets:
        if batch and (texts + ticket.size > limits.max_texts or tokens + ticket.tokens > limits.max_tokens):
            break
        batch.append(ticket)
        texts += ticket.size
        tokens += ticket.tokens
    full = texts >= limits.max_texts or tokens >= limits.max_tokens or len(batch) < len(tickets)
    if only_full:
        return tuple(batch) if full else None  # the running batch's end steps the policy again
    oldest = min(t.enqueued_at for t in tickets)
    if full or now - oldest >= limits.max_wait_s:
        return tuple(batch)
    result.wake(oldest + limits.max_wait_s)
    return None


# ----------------------------------------------------------------------------- policies


class FifoPolicy:
    """One queue in arrival order; the head must go first (head-of-line blocking), no batching."""

    name = "fifo"

    def __init__(self, settings: PolicySettings = PolicySettings()):
        self.settings = settings

    def step(self, state: QueueState) -> StepResult:
        result = StepResult()
        free = dict(state.free_slots)
        idle = dict(state.embedding_idle)
        for ticket in expire_overdue(state, result):
            if ticket.is_batched:
                if not idle.get(ticket.model, False):
                    break
                result.decisions.append(RunBatch(ticket.model, (ticket,)))
                idle[ticket.model] = False
            else:
                if free.get(ticket.model, 0) <= 0:
                    break
                result.decisions.append(Admit(ticket))
                free[ticket.model] -= 1
        return result


class PriorityPolicy:
    """Per model: priority (with aging), then arrival. One embedding request per engine call."""

    name = "priority"

    def __init__(self, settings: PolicySettings = PolicySettings()):
        self.settings = settings

    def order(self, tickets: list[Ticket], now: float) -> list[Ticket]:
        return sorted(tickets, key=lambda t: (effective_priority(t, now, self.settings.aging_s), t.enqueued_at))

    def step(self, state: QueueState) -> StepResult:
        result = StepResult()
        for model, tickets in by_model(expire_overdue(state, result)).items():
            ordered = self.order(tickets, state.now)
            if ordered[0].is_batched:
                if state.embedding_idle.get(model, False):
                    result.decisions.append(RunBatch(model, (ordered[0],)))
            else:
                admit_llm(ordered, state.free_slots.get(model, 0), result)
        return result


class SloPolicy:
    """Per model: least slack first (deadline, or arrival + the class's default SLO). Embeddings batched."""

    name = "slo"

    def __init__(self, settings: PolicySettings = PolicySettings()):
        self.settings = settings

    def slack(self, ticket: Ticket, now: float) -> float:
        deadline = ticket.deadline_at
        if deadline is None:
            deadline = ticket.enqueued_at + self.settings.default_slo_s.get(ticket.kind, 10.0)
        return deadline - now

    def step(self, state: QueueState) -> StepResult:
        result = StepResult()
        for model, tickets in by_model(expire_overdue(state, result)).items():
            ordered = sorted(tickets, key=lambda t: (self.slack(t, state.now), t.enqueued_at))
            if ordered[0].is_batched:
                if state.embedding_idle.get(model, False):
                    batch = form_batch(ordered, self.settings.batch, state.now, result, only_full=state.embedding_running.get(model, 0) > 0)
                    if batch:
                        result.decisions.append(RunBatch(model, batch))
            else:
                admit_llm(ordered, state.free_slots.get(model, 0), result)
        return result


class HybridPolicy:
    """Embeddings batched per model and interleaved with decode steps; LLM admission by priority,
    then deadline, then arrival; background only fills what interactive work leaves."""

    name = "hybrid"

    def __init__(self, settings: PolicySettings = PolicySettings()):
        self.settings = settings

    def _key(self, ticket: Ticket, now: float) -> tuple[int, float, float]:
        deadline = ticket.deadline_at
        return (effective_priority(ticket, now, self.settings.aging_s), math.inf if deadline is None else deadline, ticket.enqueued_at)

    def step(self, state: QueueState) -> StepResult:
        result = StepResult()
        now = state.now
        for model, tickets in by_model(expire_overdue(state, result)).items():
            ordered = sorted(tickets, key=lambda t: self._key(t, now))
            if ordered[0].is_batched:
                if state.embedding_idle.get(model, False):
                    batch = form_batch(ordered, self.settings.batch, now, result, only_full=state.embedding_running.get(model, 0) > 0)
                    if batch:
                        result.decisions.append(RunBatch(model, batch))
            else:
                # Reservation follows the priority asked for: aging reorders background work
                # among the rest but never hands it the slots kept for interactive requests.
                admit_llm(
                    ordered,
                    state.free_slots.get(model, 0),
                    result,
                    reserve_for_background=self.settings.reserved_interactive_slots,
                    background=lambda t: t.meta.background,
                )
        return result


POLICIES: dict[str, type[FifoPolicy] | type[PriorityPolicy] | type[SloPolicy] | type[HybridPolicy]] = {
    "fifo": FifoPolicy,
    "priority": PriorityPolicy,
    "slo": SloPolicy,
    "hybrid": HybridPolicy,
}
