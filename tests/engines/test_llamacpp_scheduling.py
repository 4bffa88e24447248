"""Model-free tests of the llama.cpp engine's scheduler, prefix lookup and text streaming."""

from __future__ import annotations

import numpy as np

from sage_daemon.engines.batch_scheduler import BatchScheduler, KvCopy, KvTrim, Sequence, SeqStatus
from sage_daemon.engines.prefix_cache import PrefixIndex, longest_common_prefix, prefix_hashes
from sage_daemon.engines.text_stream import StopStringMatcher, Utf8StreamDecoder


def seq(tokens: list[int] | range, max_tokens: int = 8) -> Sequence:
    return Sequence(prompt=np.asarray(list(tokens), dtype=np.int32), max_tokens=max_tokens)


def run_to_decode(sched: BatchScheduler) -> None:
    """Step until no sequence is prefilling, sampling token 7 for each that gets logits."""
    for _ in range(100):
        plan = sched.schedule()
        for item in plan.items:
            if item.wants_logits:
                sched.on_sampled(item.seq, 7)
        if all(s.status is SeqStatus.DECODE for s in sched.running.values()) and not sched.waiting:
            return
    raise AssertionError("prefill never finished")


# -- admission and the token budget ----------------------------------------------------------------


def test_admits_fifo_up_to_the_slot_count_and_queues_the_rest() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=64)
    a, b, c = seq(range(5)), seq(range(10, 15)), seq(range(20, 25))
    for s in (a, b, c):
        sched.add(s)
    plan = sched.schedule()
    assert plan.admitted == [a, b]
    assert [s.slot for s in (a, b)] == [0, 1]
    assert list(sched.waiting) == [c]
    # Both whole prompts fit the budget: one step prefills both and asks for their logits.
    assert [(i.seq, len(i.tokens), i.start_pos, i.wants_logits) for i in plan.items] == [(a, 5, 0, True), (b, 5, 0, True)]


def test_decoding_sequences_get_a_token_before_prefill_chunks_share_the_rest() -> None:
    sched = BatchScheduler(n_slots=3, token_budget=10)
    a = seq(range(4))
    sched.add(a)
    run_to_decode(sched)
    long_b, long_c = seq(range(100, 130)), seq(range(200, 230))
    sched.add(long_b)
    sched.add(long_c)
    plan = sched.schedule()
    # a decodes its sampled token at position 4; b takes the other 9 tokens; c waits its turn.
    assert [(i.seq, len(i.tokens), i.start_pos) for i in plan.items] == [(a, 1, 4), (long_b, 9, 0)]
    assert plan.items[0].wants_logits and not plan.items[1].wants_logits
    assert plan.n_tokens == 10


def test_a_long_prompt_is_prefilled_in_chunks_and_only_its_last_chunk_wants_logits() -> None:
    sched = BatchScheduler(n_slots=1, token_budget=8)
    s = seq(range(20))
    sched.add(s)
    chunks = []
    while s.status is SeqStatus.PREFILL or s.status is SeqStatus.WAITING:
        plan = sched.schedule()
        chunks += [(item.start_pos, len(item.tokens), item.wants_logits) for item in plan.items]
    assert chunks == [(0, 8, False), (8, 8, False), (16, 4, True)]


def test_finished_sequence_leaves_an_idle_slot_that_a_new_request_can_take() -> None:
    sched = BatchScheduler(n_slots=1, token_budget=16)
    a = seq(range(4))
    sched.add(a)
    run_to_decode(sched)
    b = seq(range(50, 54))
    sched.add(b)
    assert sched.schedule().admitted == []  # the only slot is live
    assert sched.finish(a) == []  # cells kept for reuse
    assert sched.idle and sched.slots_busy == 0
    plan = sched.schedule()
    assert plan.admitted == [b]
    assert plan.kv_ops == [KvTrim(0, 0)]  # nothing shared: the idle slot's cells are evicted


def test_a_cancelled_sequence_keeps_its_computed_cells_for_the_next_request() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=64, prefix_block_size=4)
    a = seq(range(20))
    sched.add(a)
    run_to_decode(sched)
    sched.on_sampled(a, 99)  # sampled, not yet fed: not in the cells
    assert sched.finish(a) == []  # the client went away mid-generation
    assert sched.slots_busy == 0 and list(sched.idle[0].tokens) == list(range(20))
    b = seq(list(range(20)) + [7, 8])  # the same chat, asked again
    sched.add(b)
    plan = sched.schedule()
    assert plan.admitted == [b] and b.n_cached == 20
    # Cancelled half-way through its prompt: only the prefilled part is kept.
    c = seq(range(100, 140))
    sched2 = BatchScheduler(n_slots=1, token_budget=16)
    sched2.add(c)
    sched2.schedule()
    assert c.n_computed == 16
    sched2.finish(c)
    assert list(sched2.idle[0].tokens) == list(range(100, 116))
    waiting = seq(range(3))
    sched2.add(waiting)
    assert sched2.finish(waiting) == [] and not sched2.waiting


def test_an_aborted_step_is_rolled_back_and_scheduled_again() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=12)
    a = seq(range(4))
    sched.add(a)
    run_to_decode(sched)
    sched.on_sampled(a, 42)
    b = seq(range(100, 120))  # 20 prompt tokens: 11 fit beside a's decode token
    sched.add(b)
    plan = sched.schedule()
    before = [(item.seq.seq_no, list(item.tokens), item.start_pos, item.wants_logits) for item in plan.items]
    assert (a.n_output_fed, b.n_computed) == (1, 11)
    sched.unschedule(plan)
    assert (a.n_output_fed, b.n_computed, b.status) == (0, 0, SeqStatus.PREFILL)
    again = sched.schedule()
    assert again.admitted == [] and again.kv_ops == []
    assert [(item.seq.seq_no, list(item.tokens), item.start_pos, item.wants_logits) for item in again.items] == before
    # A prefill chunk that finished the prompt goes back to prefilling.
    sched.on_sampled(a, 43)
    last = sched.schedule()
    assert b.status is SeqStatus.DECODE
    sched.unschedule(last)
    assert b.status is SeqStatus.PREFILL and b.n_computed == 11 and a.n_output_fed == 1


def background_jobs_decoding(sched: BatchScheduler) -> list[Sequence]:
    jobs = [seq(range(10 * i, 10 * i + 4), max_tokens=64) for i in (1, 2)]
    for job in jobs:
        job.background = True
        sched.add(job)
    run_to_decode(sched)
    for job in jobs:
        sched.on_sampled(job, 7)
    return jobs


def test_an_interactive_request_runs_in_steps_of_its_own_until_its_first_output_is_out() -> None:
    sched = BatchScheduler(n_slots=3, token_budget=64)
    jobs = background_jobs_decoding(sched)
    chat = seq(range(100, 105))
    sched.add(chat)
    plan = sched.schedule()
    assert [item.seq for item in plan.items] == [chat]  # the background decodes sit the prefill out
    for job in jobs:
        assert job.n_output_fed == 0
    # Its first token held no text yet (half of a character): the next step is still its own.
    sched.on_sampled(chat, 8)
    assert [item.seq for item in sched.schedule().items] == [chat]
    sched.on_sampled(chat, 9)
    chat.answered = True  # the loop handed its first text out
    nxt = sched.schedule()
    assert {id(item.seq) for item in nxt.items} == {id(chat), *map(id, jobs)}  # then everyone again


def test_an_interactive_request_without_output_holds_background_work_back_for_a_few_tokens_only() -> None:
    from sage_daemon.engines.batch_scheduler import URGENT_OUTPUT_TOKENS

    sched = BatchScheduler(n_slots=3, token_budget=64)
    jobs = background_jobs_decoding(sched)
    chat = seq(range(100, 105), max_tokens=64)  # e.g. a stop-string prefix held back for long
    sched.add(chat)
    for _ in range(URGENT_OUTPUT_TOKENS):
        assert [item.seq for item in sched.schedule().items] == [chat]
        sched.on_sampled(chat, 8)
    assert {id(item.seq) for item in sched.schedule().items} == {id(chat), *map(id, jobs)}


# -- prefix reuse decisions ----------------------------------------------------------------------------


def test_shared_system_prompt_is_copied_from_a_live_sequence_into_a_free_slot() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=256, prefix_block_size=4)
    system = list(range(1, 41))
    a = seq(system + [100, 101])
    sched.add(a)
    run_to_decode(sched)
    b = seq(system + [200, 201, 202])
    sched.add(b)
    plan = sched.schedule()
    assert plan.admitted == [b]
    assert plan.kv_ops == [KvCopy(src_slot=0, dst_slot=1, n_tokens=40)]
    assert b.n_cached == 40
    prefill = [i for i in plan.items if i.seq is b][0]
    assert prefill.start_pos == 40 and list(prefill.tokens) == [200, 201, 202]


def test_multi_turn_continuation_reuses_its_idle_slot_in_place() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=256, prefix_block_size=4)
    turn1 = list(range(1, 30))
    a = seq(turn1)
    sched.add(a)
    run_to_decode(sched)
    sched.schedule()  # feed the sampled token 7: it is now in a's cells
    sched.on_sampled(a, 8)
    sched.finish(a)
    cached = turn1 + [7]  # the last sampled token (8) was never decoded
    assert sched.idle[0].tokens.tolist() == cached
    b = seq(cached + [8, 50, 51])
    sched.add(b)
    plan = sched.schedule()
    assert b.slot == 0 and b.n_cached == len(cached)
    assert plan.kv_ops == [KvTrim(0, len(cached))]


def test_reuse_never_covers_the_last_prompt_token() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=256, prefix_block_size=4)
    prompt = list(range(1, 21))
    a = seq(prompt)
    sched.add(a)
    run_to_decode(sched)
    sched.finish(a)
    b = seq(prompt)  # the very same prompt again
    sched.add(b)
    plan = sched.schedule()
    assert b.n_cached == len(prompt) - 1
    item = [i for i in plan.items if i.seq is b][0]
    assert item.start_pos == len(prompt) - 1 and len(item.tokens) == 1 and item.wants_logits


def test_without_free_slots_the_least_recently_used_idle_slot_is_evicted() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=256, prefix_block_size=4)
    a, b = seq(range(100, 110)), seq(range(200, 210))
    for s in (a, b):
        sched.add(s)
    run_to_decode(sched)
    sched.finish(a)  # slot 0 idle first (older)
    sched.finish(b)  # slot 1 idle
    c = seq(range(300, 310))
    sched.add(c)
    plan = sched.schedule()
    assert c.slot == 0 and plan.kv_ops == [KvTrim(0, 0)]
    assert 1 in sched.idle


def test_idle_caches_beyond_their_token_budget_are_evicted_oldest_first() -> None:
    # The newest idle cache does not count: the budget bounds the older ones.
    sched = BatchScheduler(n_slots=4, token_budget=256, prefix_block_size=4, idle_cache_tokens=15)
    a, b, c = seq(range(100, 110)), seq(range(200, 210)), seq(range(300, 310))
    for s in (a, b, c):
        sched.add(s)
    run_to_decode(sched)
    assert sched.finish(a) == [] and sched.finish(b) == []  # 10 older cached tokens: within budget
    assert sched.finish(c) == [KvTrim(a.slot, 0)]  # 20 older > 15: the oldest idle cache goes
    assert sorted(sched.idle) == [b.slot, c.slot]


def test_the_newest_idle_cache_is_kept_whatever_its_size() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=256, prefix_block_size=4, idle_cache_tokens=0)
    a, b = seq(range(100, 140)), seq(range(200, 210))
    for s in (a, b):
        sched.add(s)
    run_to_decode(sched)
    assert sched.finish(a) == []  # 40 tokens over a budget of 0, but the newest: kept
    assert sched.finish(b) == [KvTrim(a.slot, 0)]  # now a is older: evicted; b is kept
    assert list(sched.idle) == [b.slot]


def test_partial_match_on_an_idle_slot_copies_when_a_slot_is_free() -> None:
    sched = BatchScheduler(n_slots=2, token_budget=256, prefix_block_size=4)
    system = list(range(1, 33))
    a = seq(system + [90, 91, 92, 93])
    sched.add(a)
    run_to_decode(sched)
    sched.finish(a)
    b = seq(system + [60, 61])
    sched.add(b)
    plan = sched.schedule()
    # The idle slot keeps its own conversation; the shared part is copied to the free slot.
    assert b.slot == 1 and plan.kv_ops == [KvCopy(0, 1, 32)] and 0 in sched.idle


# -- prefix lookup operators ----------------------------------------------------------------------------


def test_prefix_hashes_and_lcp_agree_with_the_reference() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50_000, size=100, dtype=np.int32)
    b = a.copy()
    b[37] += 1
    assert longest_common_prefix(a, b) == 37
    assert longest_common_prefix(a, a[:10]) == 10
    ha, hb = prefix_hashes(a, 16), prefix_hashes(b, 16)
    assert len(ha) == 6
    assert (ha[:2] == hb[:2]).all() and (ha[2:] != hb[2:]).all()  # block 2 holds token 37


def test_prefix_lookup_runs_on_the_compiled_cython_operators() -> None:
    import cython_ops

    tokens = np.arange(64, dtype=np.int32)
    assert (prefix_hashes(tokens, 16) == cython_ops.prefix_hashes(tokens, 16)).all()


def test_prefix_index_picks_the_longest_exact_match() -> None:
    index = PrefixIndex(block_size=4)
    prompt = np.arange(1, 30, dtype=np.int32)
    slots = {
        0: np.arange(1, 10, dtype=np.int32),  # 9 tokens shared
        1: np.concatenate([np.arange(1, 22), [999]]).astype(np.int32),  # 21 shared
        2: np.arange(500, 540, dtype=np.int32),  # nothing shared
    }
    match = index.best_match(prompt, slots)
    assert match is not None and (match.slot, match.n_tokens) == (1, 21)
    assert index.best_match(np.arange(500, 502, dtype=np.int32), slots) is None  # below one block


# -- text streaming -------------------------------------------------------------------------------------


def test_utf8_decoder_holds_split_characters_until_complete() -> None:
    dec = Utf8StreamDecoder()
    data = "é€😀".encode()
    out = [dec.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) == "é€😀"
    assert all("\ufffd" not in piece for piece in out)
    assert out[0] == "" and out[1] == "é"
    assert dec.flush() == ""
    cut = Utf8StreamDecoder()
    assert cut.feed(b"ok\xe2\x82") == "ok" and cut.flush() == ""  # a character cut by max_tokens is dropped


def test_stop_string_spanning_pieces_is_held_back_and_never_emitted() -> None:
    m = StopStringMatcher(["END!"])
    emitted = []
    for piece in ["Hello E", "N", "D", "! more"]:
        text, hit = m.feed(piece)
        emitted.append(text)
        if hit:
            break
    assert emitted == ["Hello ", "", "", ""] and hit


def test_stop_matcher_releases_a_false_start_and_flushes_at_the_end() -> None:
    m = StopStringMatcher(["</s>", "###"])
    assert m.feed("a <") == ("a ", False)
    assert m.feed("b") == ("<b", False)
    assert m.feed(" #") == (" ", False)
    assert m.flush() == "#"
    assert StopStringMatcher([]).feed("x###") == ("x###", False)
    assert StopStringMatcher(["###"]).feed("ab###cd###") == ("ab", True)
