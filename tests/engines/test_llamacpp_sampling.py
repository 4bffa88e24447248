"""The llama.cpp engine's per-sequence Sampler on hand-made logits (no model): the steps before
the draw (end-of-generation suppression, OpenAI's presence and frequency penalties) and seeds."""

from __future__ import annotations

import numpy as np

from sage_daemon.engines.base import SamplingParams
from sage_daemon.engines.llamacpp_sampling import Sampler


def row(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_greedy_picks_the_highest_logit_and_ignore_eos_never_picks_an_end_token() -> None:
    assert Sampler(SamplingParams(temperature=0.0), 4, eog_tokens=[2]).pick(row(0, 1, 5, 2)) == 2
    suppressed = Sampler(SamplingParams(temperature=0.0, ignore_eos=True), 4, eog_tokens=[2])
    assert suppressed.pick(row(0, 1, 5, 2)) == 3


def test_penalties_lower_a_token_by_count_times_frequency_plus_presence_once() -> None:
    sampler = Sampler(SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=1.0), 3)
    # Token 0 leads by 2.9: picked; then 0 - (1 x 0.5 + 1.0) = 1.5 still leads; then 0 - (2 x 0.5 + 1.0) = 1.0 < 1.1.
    picks = [sampler.pick(row(3.0, 0.1, 1.1)) for _ in range(3)]
    assert picks == [0, 0, 2]
    # Token 2 now has one use (1.1 - 1.5 = -0.4), token 0 two (3.0 - 2.0 = 1.0): 0 again, over 1 (0.1).
    assert sampler.pick(row(3.0, 0.1, 1.1)) == 0


def test_negative_penalties_favour_repeats() -> None:
    sampler = Sampler(SamplingParams(temperature=0.0, presence_penalty=-2.0), 2)
    assert [sampler.pick(row(1.0, 0.0)) for _ in range(2)] == [0, 0]
    assert sampler.pick(row(1.0, 2.5)) == 0  # 1.0 + 2.0 = 3.0 beats 2.5


def test_a_seed_repeats_its_draws_and_different_seeds_differ() -> None:
    logits = np.random.default_rng(1).standard_normal(5000).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234)

    def draws(p: SamplingParams) -> list[int]:
        sampler = Sampler(p, len(logits))
        return [sampler.pick(logits.copy()) for _ in range(20)]

    assert draws(params) == draws(params)
    assert draws(params) != draws(SamplingParams(temperature=1.0, top_p=0.95, seed=4321))
    assert len(set(draws(params))) > 5  # it draws, it does not pick the top every time


def test_logit_bias_is_added_before_the_draw() -> None:
    logits = row(3.0, 0.0, 1.0, 2.0)
    assert Sampler(SamplingParams(temperature=0.0, logit_bias=((1, 100.0),)), 4).pick(logits.copy()) == 1
    assert Sampler(SamplingParams(temperature=0.0, logit_bias=((0, -100.0),)), 4).pick(logits.copy()) == 3
    # A small bias moves a near tie: 2.0 + 1.5 = 3.5 beats 3.0; and it applies to every draw.
    nudged = Sampler(SamplingParams(temperature=0.0, logit_bias=((3, 1.5),)), 4)
    assert [nudged.pick(logits.copy()) for _ in range(3)] == [3, 3, 3]
    # With ignore_eos, a bias cannot bring back a suppressed end token.
    assert Sampler(SamplingParams(temperature=0.0, ignore_eos=True, logit_bias=((2, 100.0),)), 4, eog_tokens=[2]).pick(logits.copy()) == 0


def test_a_banned_token_is_never_drawn_at_temperature_one() -> None:
    logits = np.zeros(50, dtype=np.float32)
    logits[7] = 5.0  # the likeliest token by far
    sampler = Sampler(SamplingParams(temperature=1.0, seed=3, logit_bias=((7, -100.0),)), 50)
    draws = {sampler.pick(logits.copy()) for _ in range(300)}
    assert 7 not in draws and len(draws) > 20


def test_logprobs_are_the_raw_rows_log_softmax_whatever_the_sampling_settings() -> None:
    logits = np.random.default_rng(2).standard_normal(1000).astype(np.float32) * 3
    expected = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum())
    order = np.argsort(-expected)
    sampler = Sampler(SamplingParams(temperature=0.8, top_k=5, seed=1, logit_bias=((int(order[-1]), 100.0),), logprobs=3), len(logits))
    token = sampler.pick(logits.copy())
    assert token == int(order[-1])  # the bias forced it: it changes the draw, not the reported distribution
    logprob, top = sampler.logprobs_of(token)
    assert abs(logprob - expected[token]) < 1e-4
    assert [i for i, _ in top] == [int(i) for i in order[:3]]
    assert all(abs(v - expected[i]) < 1e-4 for i, v in top)
    assert Sampler(SamplingParams(temperature=0.0, logprobs=0), 3).pick(row(1.0, 2.0, 0.0)) == 1
    none_top = Sampler(SamplingParams(temperature=0.0, logprobs=0), 3)
    none_top.pick(row(1.0, 2.0, 0.0))
    assert none_top.logprobs_of(1)[1] == []


def test_top_logprobs_are_exact_for_flat_and_peaked_rows() -> None:
    for logits in (np.zeros(5000, dtype=np.float32) + np.arange(5000, dtype=np.float32) * 1e-4,  # flat: every logprob ~ -8.5
                   np.random.default_rng(3).standard_normal(5000).astype(np.float32) * 20):      # peaked
        sampler = Sampler(SamplingParams(temperature=0.0, logprobs=20), len(logits))
        token = sampler.pick(logits.copy())
        _, top = sampler.logprobs_of(token)
        assert [i for i, _ in top] == list(np.argsort(-logits.astype(np.float64), kind="stable")[:20])
