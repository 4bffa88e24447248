"""sample_logits against the pure-Python reference, and the distribution it draws from."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cython_ops import sample_logits

from . import reference

SETTINGS = st.sampled_from(
    [
        dict(temperature=0.0),
        dict(temperature=1.0),
        dict(temperature=0.7),
        dict(temperature=0.7, top_p=0.9),
        dict(temperature=1.3, top_p=0.5),
        dict(temperature=1.0, top_p=0.0),
        dict(temperature=0.8, top_k=1),
        dict(temperature=0.8, top_k=5),
        dict(temperature=0.8, top_k=40, top_p=0.95),
        dict(temperature=0.8, min_p=0.05),
        dict(temperature=0.8, top_p=0.9, min_p=0.1),
        dict(temperature=2.0, top_k=3, top_p=0.3, min_p=0.5),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3000),
    spread=st.sampled_from([0.1, 2.0, 8.0, 30.0]),
    params=SETTINGS,
    u=st.floats(0.0, 1.0, exclude_max=True),
)
def test_sample_logits_matches_reference(seed, n, spread, params, u):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(n) * spread).astype(np.float32)
    if n > 4:
        logits[rng.integers(0, n, 2)] = -np.inf  # suppressed tokens (ignore_eos, logit bias)
        logits[rng.integers(0, n)] = logits.max()  # a tie at the top
    expected = reference.sample_logits(logits.tolist(), u=u, **params)
    assert sample_logits(logits, u=u, **params) == expected


def test_greedy_is_the_first_highest_logit_and_never_nan_or_minus_inf():
    logits = np.array([np.nan, 1.0, 3.0, -np.inf, 3.0], dtype=np.float32)
    assert sample_logits(logits, 0.0) == 2
    assert sample_logits(logits, 1.0, u=0.999999) != 0


def test_draws_follow_the_truncated_softmax():
    """20,000 draws over 6 tokens: each frequency within 4 standard errors of its probability."""
    logits = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], dtype=np.float32))
    draws = np.random.default_rng(0).random(20_000)
    for params, probs in [
        (dict(temperature=1.0), [0.4, 0.25, 0.15, 0.1, 0.06, 0.04]),
        (dict(temperature=1.0, top_p=0.75), [0.4 / 0.8, 0.25 / 0.8, 0.15 / 0.8, 0, 0, 0]),
        (dict(temperature=1.0, top_k=2), [0.4 / 0.65, 0.25 / 0.65, 0, 0, 0, 0]),
        (dict(temperature=1.0, min_p=0.3), [0.4 / 0.8, 0.25 / 0.8, 0.15 / 0.8, 0, 0, 0]),
    ]:
        counts = np.bincount([sample_logits(logits, u=float(u), **params) for u in draws], minlength=6)
        for token, p in enumerate(probs):
            freq = counts[token] / len(draws)
            if p == 0:
                assert counts[token] == 0, (params, token)
            else:
                assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / len(draws)), (params, token, freq, p)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(u=1.0), "u must be in"),
        (dict(u=-0.1), "u must be in"),
        (dict(top_p=1.5), "top_p must be in"),
        (dict(min_p=1.5), "min_p must be in"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_logits(np.zeros(4, dtype=np.float32), 1.0, **kwargs)


def test_no_finite_logit_is_an_error():
    with pytest.raises(ValueError, match="no finite logit"):
        sample_logits(np.full(4, -np.inf, dtype=np.float32), 1.0)
    with pytest.raises(ValueError, match="empty"):
        sample_logits(np.zeros(0, dtype=np.float32), 0.0)
