"""The llama.cpp engine's scheduling decisions, as a plain object stepped by the decode loop.

In the spirit of vLLM v1's scheduler: it owns the sequences' state (waiting FIFO, slots,
tokens in each slot's KV cells) and decides, each step, which sequences get admitted into
which slot (and which cached prefix they reuse), and how the step's token budget is shared
(one token per decoding sequence first, then prefill chunks in admission order). After a step
it applies the sampled tokens (`update_from_output`) and the stop rule (an end-of-generation
token unless `ignore_eos`, `max_tokens`), and it decides which steps a newly arrived
interactive request may cut short (`StepPlan.preemptible`). It does no I/O and knows nothing
of llama.cpp or of text (stop strings stay with the loop, which decodes the text): it returns
KV operations and batch items for the loop to apply, so it is unit-tested without a model.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from .prefix_cache import PrefixIndex, as_token_array

# An interactive request keeps background sequences out of the steps for at most this many sampled
# tokens while none of its output has come out (held-back bytes or a stop-string prefix): bounded,
# so batch work always moves.
URGENT_OUTPUT_TOKENS = 8

# Background steps cut short in a row before one runs regardless (see `BatchScheduler._preemptible`).
MAX_ABORTS_IN_A_ROW = 3

StopReason = Literal["stop", "length"]  # the ends the scheduler decides (stop strings: the loop)


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request's token state. `payload` is the loop's own per-request data (sampler, channel...)."""

    prompt: npt.NDArray[np.int32]
    max_tokens: int  # the stop rule ends it with "length" once it has sampled this many tokens
    payload: object = None
    seq_no: int = 0
    status: SeqStatus = SeqStatus.WAITING
    slot: int = -1
    n_cached: int = 0  # prompt tokens whose KV cells came from the prefix cache
    n_computed: int = 0  # prompt tokens whose KV cells are in the cache (cached + prefilled)
    output: list[int] = field(default_factory=list)  # sampled tokens
    n_output_fed: int = 0  # sampled tokens already decoded into the KV cells
    background: bool = False  # batch work: it sits out the steps an interactive first token waits for
    answered: bool = False  # the loop has handed out output (or the end) for it: its first token is out
    ignore_eos: bool = False  # an end-of-generation token does not end it (the sampler never draws one either)
    finish_reason: StopReason | None = None  # set by update_from_output when the stop rule ended it

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)

    def kv_tokens(self) -> npt.NDArray[np.int32]:
        """The tokens whose KV cells this sequence holds, in position order."""
        if self.n_output_fed == 0:
            return self.prompt[: self.n_computed]
        return np.concatenate([self.prompt, np.asarray(self.output[: self.n_output_fed], dtype=np.int32)])


# KV operations for the loop to apply (in order) before the step's decode.
@dataclass(frozen=True)
class KvCopy:
    src_slot: int
    dst_slot: int
    n_tokens: int  # positions [0, n_tokens)


@dataclass(frozen=True)
class KvTrim:
    slot: int
    from_pos: int  # remove positions [from_pos, end); 0 clears the slot


KvOp = KvCopy | KvTrim


@dataclass(frozen=True)
class BatchItem:
    seq: Sequence
    tokens: npt.NDArray[np.int32] | list[int]
    start_pos: int
    wants_logits: bool  # sample after this step (last prompt token, or a decode token)


@dataclass
class StepPlan:
    kv_ops: list[KvOp]
    items: list[BatchItem]
    admitted: list[Sequence]
    sampling: list[Sequence] = field(default_factory=list)  # the sequences that get logits, in batch order
    preemptible: bool = False  # an interactive arrival may cut this step short (abort the decode)

    @property
    def n_tokens(self) -> int:
        return sum(len(item.tokens) for item in self.items)


@dataclass
class _IdleSlot:
    tokens: npt.NDArray[np.int32]
    last_used: int


class BatchScheduler:
    """Admission into `n_slots` slots, prefix reuse, and the per-step token budget."""

    def __init__(
        self,
        n_slots: int,
        token_budget: int,
        prefix_block_size: int = 16,
        min_reuse_tokens: int | None = None,
        prefix_reuse: bool = True,
        idle_cache_tokens: int | None = None,
        eog_tokens: Iterable[int] = (),
    ):
        if n_slots < 1 or token_budget < 1:
            raise ValueError("n_slots and token_budget must be >= 1")
        self.n_slots = n_slots
        self.token_budget = token_budget
        self.waiting: deque[Sequence] = deque()
        self.running: dict[int, Sequence] = {}  # slot -> live sequence
        self.idle: dict[int, _IdleSlot] = {}  # slot -> tokens kept from a finished sequence
        self.prefix_index = PrefixIndex(prefix_block_size)
        self.min_reuse_tokens = prefix_block_size if min_reuse_tokens is None else min_reuse_tokens
        self.prefix_reuse = prefix_reuse
        # Cells kept by idle slots are attended (masked) by every later decode step of the
        # unified cache, so their total is bounded: least recently used slots go first. The
        # most recently finished slot is kept whatever its size (the next turn of the chat that
        # just ended is the likeliest reuse) and does not count against the budget.
        self.idle_cache_tokens = idle_cache_tokens
        self.eog_tokens = frozenset(eog_tokens)  # end-of-generation tokens: they stop a sequence
        self.aborts_in_a_row = 0  # steps cut short since the last one that ran
        self._clock = itertools.count()
        self._seq_numbers = itertools.count()

    # -- requests in and out -------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        if seq.prompt_len < 1:
            raise ValueError("a sequence needs at least one prompt token")
        seq.prompt = as_token_array(seq.prompt)
        seq.seq_no = next(self._seq_numbers)
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def free_slots(self) -> list[int]:
        return [s for s in range(self.n_slots) if s not in self.running and s not in self.idle]

    @property
    def slots_busy(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.running) or bool(self.waiting)

    def finish(self, seq: Sequence) -> list[KvOp]:
        """A sequence ended, normally or cancelled (a client that stopped reading): its slot goes
        idle and keeps the cells computed so far for prefix reuse, so the next turn of that chat
        (or the next request with the same system prompt) does not prefill them again."""
        slot = self._release(seq)
        if slot is None:
            return []
        tokens = seq.kv_tokens()
        if len(tokens) == 0:
            return [KvTrim(slot, 0)]
        self.idle[slot] = _IdleSlot(tokens=tokens, last_used=next(self._clock))
        return self._enforce_idle_budget(newest=slot)

    def _enforce_idle_budget(self, newest: int) -> list[KvOp]:
        if self.idle_cache_tokens is None:
            return []
        ops: list[KvOp] = []
        total = sum(len(idle.tokens) for slot, idle in self.idle.items() if slot != newest)
        while total > self.idle_cache_tokens:
            lru = min(self.idle, key=lambda s: self.idle[s].last_used)
            total -= len(self.idle.pop(lru).tokens)
            self.prefix_index.forget(lru)
            ops.append(KvTrim(lru, 0))
        return ops

    def _release(self, seq: Sequence) -> int | None:
        """Mark `seq` finished; the slot it held (forgotten by the prefix index), or None if it held none."""
        status, seq.status = seq.status, SeqStatus.FINISHED
        if status is SeqStatus.WAITING:
            self.waiting.remove(seq)
            return None
        if status is SeqStatus.FINISHED:
            return None
        slot = seq.slot
        del self.running[slot]
        self.prefix_index.forget(slot)
        return slot

    def abort_all(self) -> list[Sequence]:
        seqs = list(self.waiting) + list(self.running.values())
        for seq in seqs:
            seq.status = SeqStatus.FINISHED
        self.waiting.clear()
        self.running.clear()
        self.idle.clear()
        self.prefix_index = PrefixIndex(self.prefix_index.block_size)
        return seqs

    def on_sampled(self, seq: Sequence, token: int) -> None:
        """Record `token` as sampled for `seq` (fed at the next step), without the stop rule."""
        seq.output.append(token)

    def update_from_output(self, plan: StepPlan, sampled: list[int]) -> list[KvOp]:
        """The step of `plan` ran; `sampled[i]` is the token drawn for `plan.sampling[i]`, or -1
        where the loop failed that sequence (it finished it already). Records each token and
        applies the stop rule (`stop_reason`): a sequence it ends gets `finish_reason` and its
        slot goes idle. Returns the KV operations of those slots, for the loop to apply."""
        self.aborts_in_a_row = 0
        ops: list[KvOp] = []
        for seq, token in zip(plan.sampling, sampled):
            if token < 0 or seq.status is SeqStatus.FINISHED:
                continue
            reason = stop_reason(seq, token, self.eog_tokens)
            if reason != "stop":  # an end-of-generation token is not part of the output
                seq.output.append(token)
            if reason is not None:
                seq.finish_reason = reason
                ops += self.finish(seq)
        return ops

    # -- the step ----------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        kv_ops: list[KvOp] = []
        admitted: list[Sequence] = []
        while self.waiting:
            ops = self._admit(self.waiting[0])
            if ops is None:
                break
            admitted.append(self.waiting.popleft())
            kv_ops.extend(ops)
        items, sampling = self._fill_budget()
        return StepPlan(kv_ops=kv_ops, items=items, admitted=admitted, sampling=sampling, preemptible=self._preemptible(items))

    def _fill_budget(self) -> tuple[list[BatchItem], list[Sequence]]:
        """The step's batch items (and the sequences that get logits) within the token budget."""
        items: list[BatchItem] = []
        sampling: list[Sequence] = []
        budget = self.token_budget
        # While an interactive request waits for its first output, background sequences sit the
        # steps out: its prefill and the few decode steps before text comes out (a character spread
        # over several byte tokens) are steps of its own size, not ones shared with a batch job.
        urgent = any(not s.background and not s.answered and len(s.output) < URGENT_OUTPUT_TOKENS for s in self.running.values())
        live = sorted((s for s in self.running.values() if not (urgent and s.background)), key=lambda s: s.seq_no)
        # Decoding sequences first: one token each keeps every stream moving every step.
        for seq in live:
            if budget == 0:
                break
            if seq.status is SeqStatus.DECODE and seq.n_output_fed < len(seq.output):
                pos = seq.prompt_len + seq.n_output_fed
                items.append(BatchItem(seq, [seq.output[seq.n_output_fed]], pos, True))
                sampling.append(seq)
                seq.n_output_fed += 1
                budget -= 1
        # Then prefill chunks, oldest admission first, within what is left of the budget.
        for seq in live:
            if budget == 0:
                break
            if seq.status is not SeqStatus.PREFILL:
                continue
            n = min(seq.prompt_len - seq.n_computed, budget)
            start = seq.n_computed
            seq.n_computed += n
            done = seq.n_computed == seq.prompt_len
            items.append(BatchItem(seq, seq.prompt[start : start + n], start, done))
            if done:
                sampling.append(seq)
                seq.status = SeqStatus.DECODE
            budget -= n
        return items, sampling

    def _preemptible(self, items: list[BatchItem]) -> bool:
        """Only a background step of decode tokens may be cut short: redoing it costs one decode
        step, while a thrown-away prefill chunk could cost seconds, again and again under a stream
        of interactive arrivals. A few aborts in a row at most: background work moves."""
        return (
            bool(items)
            and self.aborts_in_a_row < MAX_ABORTS_IN_A_ROW
            and all(item.seq.background and item.start_pos >= item.seq.prompt_len for item in items)
        )

    def unschedule(self, plan: StepPlan) -> None:
        """The step of `plan` did not run (llama.cpp aborted it and dropped its cells): its tokens
        go again in the next step. Admissions and KV operations stand (they were applied)."""
        self.aborts_in_a_row += 1
        for item in plan.items:
            seq = item.seq
            if item.start_pos >= seq.prompt_len:  # a decode token
                seq.n_output_fed -= len(item.tokens)
            else:  # a prefill chunk
                seq.n_computed -= len(item.tokens)
                seq.status = SeqStatus.PREFILL

    def _admit(self, seq: Sequence) -> list[KvOp] | None:
        """Give `seq` a slot and its reusable prefix; None when every slot is live."""
        free = self.free_slots()
        if not free and not self.idle:
            return None
        ops: list[KvOp] = []
        # Never reuse the whole prompt: its last token must be decoded to get logits.
        reusable = seq.prompt[: seq.prompt_len - 1]
        sources: dict[int, npt.NDArray[np.int32]] = {slot: s.kv_tokens() for slot, s in self.running.items()}
        for slot, idle in sorted(self.idle.items(), key=lambda kv: -kv[1].last_used):
            sources[slot] = idle.tokens
        match = None
        if self.prefix_reuse and len(reusable):
            match = self.prefix_index.best_match(reusable, sources, self.min_reuse_tokens)

        if match is not None and match.slot in self.idle and (not free or match.n_tokens == len(self.idle[match.slot].tokens)):
            # Reuse the idle slot in place (a multi-turn chat continuing its own cache).
            dst = match.slot
            del self.idle[dst]
            self.prefix_index.forget(dst)
            ops.append(KvTrim(dst, match.n_tokens))
            n_cached = match.n_tokens
        else:
            if free:
                dst = free[0]
            else:
                # Evict the least recently used idle slot that is not the copy source.
                evictable = [s for s in self.idle if match is None or s != match.slot]
                if not evictable:  # the only idle slot is the source: reuse it in place
                    assert match is not None
                    dst = match.slot
                    del self.idle[dst]
                    self.prefix_index.forget(dst)
                    ops.append(KvTrim(dst, match.n_tokens))
                    self._place(seq, dst, match.n_tokens)
                    return ops
                dst = min(evictable, key=lambda s: self.idle[s].last_used)
                del self.idle[dst]
                self.prefix_index.forget(dst)
                ops.append(KvTrim(dst, 0))
            n_cached = 0
            if match is not None:
                ops.append(KvCopy(match.slot, dst, match.n_tokens))
                n_cached = match.n_tokens
        self._place(seq, dst, n_cached)
        return ops

    def _place(self, seq: Sequence, slot: int, n_cached: int) -> None:
        seq.slot = slot
        seq.n_cached = n_cached
        seq.n_computed = n_cached
        seq.status = SeqStatus.PREFILL
        self.running[slot] = seq
        if slot in self.idle:  # pragma: no cover - callers remove it first
            del self.idle[slot]


def stop_reason(seq: Sequence, token: int, eog_tokens: frozenset[int]) -> StopReason | None:
    """The stop rule, for `token` just sampled for `seq`: "stop" for an end-of-generation token
    (unless the request ignores them), "length" once `max_tokens` are sampled, else None."""
    if token in eog_tokens and not seq.ignore_eos:
        return "stop"
    if len(seq.output) + 1 >= seq.max_tokens:
        return "length"
    return None
