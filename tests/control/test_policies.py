"""Policies stepped with hand-made queue states and a fake clock: no model, no I/O."""

from __future__ import annotations

from sage_daemon.control.api import Priority, RequestMeta
from sage_daemon.control.policies import (
    Admit,
    BatchLimits,
    Expire,
    FifoPolicy,
    HybridPolicy,
    PolicySettings,
    PriorityPolicy,
    QueueState,
    RunBatch,
    SloPolicy,
    Ticket,
)


def t(name: str, at: float, model: str = "llm", kind: str = "chat", priority: Priority = Priority.NORMAL, deadline: float | None = None, size: int = 1, tokens: int = 10) -> Ticket:
    return Ticket(name, model, kind, RequestMeta(name, priority=priority, deadline_s=deadline), enqueued_at=at, size=size, tokens=tokens)  # type: ignore[arg-type]


def emb(name: str, at: float, **kw: object) -> Ticket:
    return t(name, at, model="emb", kind="embedding", **kw)  # type: ignore[arg-type]


def names(decisions: list) -> list[str]:  # type: ignore[type-arg]
    out = []
    for d in decisions:
        if isinstance(d, Admit):
            out.append(f"admit {d.ticket.id}")
        elif isinstance(d, RunBatch):
            out.append("batch " + ",".join(x.id for x in d.tickets))
        elif isinstance(d, Expire):
            out.append(f"expire {d.ticket.id}")
    return out


def test_fifo_is_arrival_order_with_head_of_line_blocking() -> None:
    waiting = [t("c1", 0), t("c2", 1), emb("e1", 2), t("c3", 3)]
    result = FifoPolicy().step(QueueState(5, waiting, {"llm": 1}, {"emb": True}))
    assert names(result.decisions) == ["admit c1"]  # c2 blocks the embedding behind it
    result = FifoPolicy().step(QueueState(5, waiting[1:], {"llm": 1}, {"emb": True}))
    assert names(result.decisions) == ["admit c2", "batch e1"]  # one request per call, no batching


def test_priority_orders_by_priority_then_arrival() -> None:
    waiting = [t("low", 0, priority=Priority.LOW), t("n1", 1), t("crit", 2, priority=Priority.CRITICAL), t("n2", 3)]
    result = PriorityPolicy().step(QueueState(4, waiting, {"llm": 3}, {}))
    assert names(result.decisions) == ["admit crit", "admit n1", "admit n2"]


def test_hybrid_batches_embeddings_up_to_the_limits_sorted_by_priority() -> None:
    policy = HybridPolicy(PolicySettings(batch=BatchLimits(max_texts=4, max_tokens=1000, max_wait_s=0.005)))
    waiting = [emb("bg", 0, priority=Priority.BACKGROUND, size=2), emb("a", 0.001, size=2), emb("b", 0.002, size=1), emb("c", 0.003, size=2)]
    result = policy.step(QueueState(0.004, waiting, {}, {"emb": True}))
    # Interactive first; c (2 texts) would overflow max_texts=4 after a(2)+b(1), so the batch
    # closes before it and runs at once; background waits for the next batch.
    assert names(result.decisions) == ["batch a,b"]


def test_hybrid_waits_for_more_embeddings_up_to_max_wait() -> None:
    policy = HybridPolicy(PolicySettings(batch=BatchLimits(max_texts=64, max_tokens=10_000, max_wait_s=0.005)))
    waiting = [emb("a", 1.000), emb("b", 1.001)]
    early = policy.step(QueueState(1.002, waiting, {}, {"emb": True}))
    assert early.decisions == [] and abs(early.wake_at - 1.005) < 1e-9  # type: ignore[operator]
    late = policy.step(QueueState(1.0051, waiting, {}, {"emb": True}))
    assert names(late.decisions) == ["batch a,b"]
    busy = policy.step(QueueState(2.0, waiting, {}, {"emb": False}))
    assert busy.decisions == []  # the engine is busy: requests keep accumulating into the next batch


def test_hybrid_token_budget_closes_a_batch() -> None:
    policy = HybridPolicy(PolicySettings(batch=BatchLimits(max_texts=64, max_tokens=100, max_wait_s=1)))
    waiting = [emb("a", 0, tokens=60), emb("b", 0, tokens=60)]
    result = policy.step(QueueState(0, waiting, {}, {"emb": True}))
    assert names(result.decisions) == ["batch a"]


def test_hybrid_llm_admission_priority_then_deadline_then_arrival() -> None:
    waiting = [t("n-late", 0), t("n-deadline", 1, deadline=5), t("high", 2, priority=Priority.HIGH), t("n-early", 0.5)]
    result = HybridPolicy().step(QueueState(3, waiting, {"llm": 4}, {}))
    assert names(result.decisions) == ["admit high", "admit n-deadline", "admit n-late", "admit n-early"]


def test_background_only_fills_capacity_interactive_work_leaves() -> None:
    policy = HybridPolicy(PolicySettings(reserved_interactive_slots=1, aging_s=0))
    waiting = [t("bg1", 0, priority=Priority.BACKGROUND), t("bg2", 0.1, priority=Priority.BACKGROUND)]
    assert names(policy.step(QueueState(1, waiting, {"llm": 2}, {})).decisions) == ["admit bg1"]
    assert names(policy.step(QueueState(1, waiting, {"llm": 1}, {})).decisions) == []  # the last slot stays for interactive
    waiting.append(t("chat", 0.5))
    assert names(policy.step(QueueState(1, waiting, {"llm": 1}, {})).decisions) == ["admit chat"]


def test_background_is_not_starved_thanks_to_aging() -> None:
    policy = HybridPolicy(PolicySettings(reserved_interactive_slots=0, aging_s=10))
    old_bg = t("bg", 0, priority=Priority.BACKGROUND)
    # A steady stream of normal requests: at first they go first...
    assert names(policy.step(QueueState(5, [old_bg, t("n", 4.9)], {"llm": 1}, {})).decisions) == ["admit n"]
    # ...but after waiting 3 aging periods, background work ranks above a fresh normal request.
    assert names(policy.step(QueueState(30, [old_bg, t("n2", 29.9)], {"llm": 1}, {})).decisions) == ["admit bg"]


def test_every_policy_expires_requests_past_their_deadline() -> None:
    for policy in (FifoPolicy(), PriorityPolicy(), SloPolicy(), HybridPolicy()):
        waiting = [t("late", 0, deadline=1.0), t("fine", 0.5, deadline=10.0)]
        result = policy.step(QueueState(1.5, waiting, {"llm": 0}, {}))
        assert names(result.decisions) == ["expire late"], policy.name
        assert result.wake_at == 10.5, policy.name  # wakes for the next deadline


def test_slo_serves_least_slack_first() -> None:
    waiting = [t("relaxed", 0, deadline=60), t("urgent", 1, deadline=2), t("none", 0.5)]  # none: default 10 s SLO
    result = SloPolicy().step(QueueState(1.5, waiting, {"llm": 3}, {}))
    assert names(result.decisions) == ["admit urgent", "admit none", "admit relaxed"]


def test_a_second_batch_only_goes_when_full_while_one_runs() -> None:
    policy = HybridPolicy(PolicySettings(batch=BatchLimits(max_texts=4, max_tokens=10_000, max_wait_s=0.005)))
    partial = [emb("a", 0.0), emb("b", 0.0)]
    running = QueueState(1.0, partial, {}, {"emb": True}, {"emb": 1})
    assert policy.step(running).decisions == []  # keeps collecting behind the running batch
    full = partial + [emb("c", 0.0), emb("d", 0.0)]
    assert names(policy.step(QueueState(1.0, full, {}, {"emb": True}, {"emb": 1})).decisions) == ["batch a,b,c,d"]
    assert names(policy.step(QueueState(1.0, partial, {}, {"emb": True}, {"emb": 0})).decisions) == ["batch a,b"]
