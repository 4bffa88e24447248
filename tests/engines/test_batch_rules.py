"""The batch scheduler's decisions after a step, without a model: the stop rule applied by
`update_from_output` and which steps an interactive arrival may cut short (`StepPlan.preemptible`)."""

from __future__ import annotations

import numpy as np

from sage_daemon.engines.batch_scheduler import (
    MAX_ABORTS_IN_A_ROW,
    BatchScheduler,
    KvTrim,
    Sequence,
    SeqStatus,
    StepPlan,
    stop_reason,
)

EOG = 2  # the end-of-generation token of these tests' vocabulary


def seq(tokens: range, max_tokens: int = 8, background: bool = False, ignore_eos: bool = False) -> Sequence:
    return Sequence(prompt=np.asarray(list(tokens), dtype=np.int32), max_tokens=max_tokens, background=background, ignore_eos=ignore_eos)


def prefilled(sched: BatchScheduler, *seqs: Sequence) -> StepPlan:
    """Add `seqs` and run the step that prefills them whole: its plan, not yet updated."""
    for s in seqs:
        sched.add(s)
    plan = sched.schedule()
    assert plan.sampling == list(seqs)
    return plan


# -- the stop rule ------------------------------------------------------------------------------


def test_stop_reason_is_end_of_generation_unless_ignored_then_max_tokens() -> None:
    eog = frozenset({EOG})
    fresh = seq(range(10, 14), max_tokens=3)
    assert stop_reason(fresh, EOG, eog) == "stop"
    assert stop_reason(fresh, 7, eog) is None
    assert stop_reason(seq(range(4), max_tokens=3, ignore_eos=True), EOG, eog) is None
    fresh.output = [5, 6]  # two sampled: the third is the last one allowed
    assert stop_reason(fresh, 7, eog) == "length"
    assert stop_reason(fresh, EOG, eog) == "stop"  # the end token wins over the length


def test_an_end_of_generation_token_finishes_with_stop_and_is_not_part_of_the_output() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=64, eog_tokens=[EOG])
    a, b = seq(range(10, 14)), seq(range(20, 24))
    plan = prefilled(sched, a, b)
    ops = sched.update_from_output(plan, [EOG, 7])
    assert (a.finish_reason, a.output, a.status) == ("stop", [], SeqStatus.FINISHED)
    assert (b.finish_reason, b.output, b.status) == (None, [7], SeqStatus.DECODE)
    assert ops == [] and a.slot in sched.idle and list(sched.running.values()) == [b]
    # The next step decodes only b's token.
    assert [(item.seq, list(item.tokens)) for item in sched.schedule().items] == [(b, [7])]


def test_ignore_eos_keeps_a_sequence_going_past_end_tokens_until_max_tokens() -> None:
    sched = BatchScheduler(n_slots=1, token_budget=64, eog_tokens=[EOG])
    a = seq(range(10, 14), max_tokens=3, ignore_eos=True)
    plan = prefilled(sched, a)
    for step in range(3):
        sched.update_from_output(plan, [EOG])
        plan = sched.schedule()
        assert a.finish_reason == (None if step < 2 else "length")
    assert a.output == [EOG, EOG, EOG] and a.status is SeqStatus.FINISHED and plan.items == []


def test_max_tokens_finishes_with_length_and_the_slot_keeps_the_fed_tokens() -> None:
    sched = BatchScheduler(n_slots=1, token_budget=64, eog_tokens=[EOG], idle_cache_tokens=0)
    a = seq(range(10, 14), max_tokens=2)
    plan = prefilled(sched, a)
    sched.update_from_output(plan, [7])
    assert a.status is SeqStatus.DECODE  # 1 of 2 tokens: it goes on
    plan = sched.schedule()  # feeds 7
    assert sched.update_from_output(plan, [8]) == []  # the newest idle cache is always kept
    assert (a.finish_reason, a.output) == ("length", [7, 8])
    assert sched.idle[a.slot].tokens.tolist() == [10, 11, 12, 13, 7]  # 8 was sampled, never decoded
    # The next request takes the only slot: a's cache (nothing shared) is evicted.
    b = seq(range(30, 34), max_tokens=1)
    plan = prefilled(sched, b)
    assert plan.kv_ops == [KvTrim(0, 0)]
    assert sched.update_from_output(plan, [9]) == [] and b.finish_reason == "length"


def test_a_sequence_the_loop_failed_or_finished_is_left_alone() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=64, eog_tokens=[EOG])
    a, b = seq(range(10, 14)), seq(range(20, 24))
    plan = prefilled(sched, a, b)
    sched.finish(a)  # the loop failed a's sampling: it finished a and passes -1
    sched.update_from_output(plan, [-1, 7])
    assert (a.output, a.finish_reason) == ([], None) and b.output == [7]
    sched.finish(b)  # finished by the loop (a stop string) before the update: no token recorded
    sched.update_from_output(StepPlan(kv_ops=[], items=[], admitted=[], sampling=[b]), [8])
    assert b.output == [7] and b.finish_reason is None


# -- which steps may be cut short -----------------------------------------------------------------


def background_decoding(sched: BatchScheduler, n: int = 2) -> list[Sequence]:
    jobs = [seq(range(10 * i, 10 * i + 4), max_tokens=100, background=True) for i in range(1, n + 1)]
    plan = prefilled(sched, *jobs)
    assert not plan.preemptible  # a prefill step: throwing it away could cost seconds
    sched.update_from_output(plan, [7] * n)
    return jobs


def test_a_step_of_background_decode_tokens_only_is_preemptible() -> None:
    sched = BatchScheduler(n_slots=3, token_budget=64)
    jobs = background_decoding(sched)
    plan = sched.schedule()
    assert plan.preemptible and [item.seq for item in plan.items] == jobs


def test_a_step_with_interactive_work_or_a_prefill_chunk_is_not_preemptible() -> None:
    sched = BatchScheduler(n_slots=3, token_budget=64)
    background_decoding(sched)
    late_job = seq(range(90, 94), background=True)
    sched.add(late_job)
    with_prefill = sched.schedule()
    assert any(item.seq is late_job for item in with_prefill.items) and not with_prefill.preemptible

    sched2 = BatchScheduler(n_slots=3, token_budget=64)
    jobs = background_decoding(sched2)
    chat = seq(range(100, 104))
    plan = prefilled(sched2, chat)  # the interactive prefill runs alone (urgent): not preemptible
    assert [item.seq for item in plan.items] == [chat] and not plan.preemptible
    sched2.update_from_output(plan, [8])
    chat.answered = True
    shared = sched2.schedule()  # background and interactive decode tokens together
    assert {id(item.seq) for item in shared.items} == {id(chat), *map(id, jobs)} and not shared.preemptible


def test_background_steps_are_cut_short_a_few_times_in_a_row_at_most() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=64)
    background_decoding(sched)
    for _ in range(MAX_ABORTS_IN_A_ROW):
        plan = sched.schedule()
        assert plan.preemptible
        sched.unschedule(plan)  # an interactive arrival aborted it
    plan = sched.schedule()
    assert not plan.preemptible  # this one runs whatever arrives
    sched.update_from_output(plan, [7, 7])  # it ran: the count starts again
    assert sched.aborts_in_a_row == 0 and sched.schedule().preemptible


def test_an_empty_plan_is_not_preemptible() -> None:
    sched = BatchScheduler(n_slots=1, token_budget=8)
    assert not sched.schedule().preemptible
