"""prefix_hashes and longest_common_prefix against the pure-Python reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cython_ops import longest_common_prefix, prefix_hashes

from . import reference

IDS = st.lists(st.integers(0, 2**31 - 1), max_size=200)


@settings(max_examples=150, deadline=None)
@given(ids=IDS, block_size=st.integers(1, 20))
def test_prefix_hashes_match_reference(ids, block_size):
    expected = reference.prefix_hashes(ids, block_size)
    got = prefix_hashes(np.array(ids, dtype=np.int64), block_size)
    assert got.dtype == np.uint64
    assert got.tolist() == expected
    # Values, not dtype, determine the hash; lists work too.
    assert prefix_hashes(np.array(ids, dtype=np.int32), block_size).tolist() == expected
    assert prefix_hashes(ids, block_size).tolist() == expected


@settings(max_examples=80, deadline=None)
@given(a=IDS, b=IDS, block_size=st.integers(1, 8))
def test_chained_hashes_share_exactly_the_common_full_blocks(a, b, block_size):
    ha, hb = prefix_hashes(a, block_size).tolist(), prefix_hashes(b, block_size).tolist()
    shared = reference.longest_common_prefix(a, b) // block_size
    assert ha[:shared] == hb[:shared]
    if shared < min(len(ha), len(hb)):
        assert ha[shared] != hb[shared]   # a 64-bit collision here would be a bug, not luck


@settings(max_examples=150, deadline=None)
@given(a=IDS, b=IDS, prefix=IDS)
def test_longest_common_prefix(a, b, prefix):
    a, b = prefix + a, prefix + b
    expected = reference.longest_common_prefix(a, b)
    assert expected >= len(prefix)
    assert longest_common_prefix(np.array(a, np.int64), np.array(b, np.int64)) == expected
    assert longest_common_prefix(np.array(a, np.int32), np.array(b, np.int64)) == expected
    assert longest_common_prefix(a, b) == expected


def test_hashes_are_stable_across_processes():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import numpy as np; from cython_ops import prefix_hashes;"
        "print(prefix_hashes(np.arange(100) * 7919 % 50000, 16).tolist())"
    )
    root = str(Path(__file__).resolve().parents[2])
    outs = {
        subprocess.run(
            [sys.executable, "-c", code, root], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    assert eval(outs.pop()) == reference.prefix_hashes(list(np.arange(100) * 7919 % 50000), 16)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: prefix_hashes(np.arange(10), 0), "block_size must be > 0"),
        (lambda: prefix_hashes(np.arange(10), -4), "block_size must be > 0"),
        (lambda: prefix_hashes(np.arange(10), 2.0), "block_size must be an int"),
        (lambda: prefix_hashes(np.arange(10.0), 2), "must have an integer dtype"),
        (lambda: prefix_hashes(np.arange(20).reshape(4, 5), 2), "must be 1-D"),
        (lambda: prefix_hashes(np.arange(20)[::2], 2), "must be C-contiguous"),
        (lambda: prefix_hashes(np.array([1, -2, 3, 4]), 2), "must be non-negative"),
        (lambda: prefix_hashes("abc", 2), "sequence of non-negative int"),
        (lambda: prefix_hashes(["a", "b"], 2), "must hold int token ids"),
        (lambda: longest_common_prefix(np.arange(4.0), np.arange(4)), "must have an integer dtype"),
        (lambda: longest_common_prefix(np.arange(4), np.arange(8)[::2]), "must be C-contiguous"),
        (lambda: longest_common_prefix(np.arange(4), np.zeros((2, 2), np.int64)), "must be 1-D"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
