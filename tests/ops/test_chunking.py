"""chunk_text against LangChain's RecursiveCharacterTextSplitter and the pure-Python reference."""

from __future__ import annotations

import inspect
import os
import sysconfig

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cython_ops import chunk_text, chunk_text_with_offsets

from . import reference

lc = pytest.importorskip("langchain_text_splitters")


def langchain_chunks(text, size, overlap, separators=None, keep_separator=True):
    splitter = lc.RecursiveCharacterTextSplitter(
        chunk_size=size, chunk_overlap=overlap, separators=separators, keep_separator=keep_separator
    )
    return splitter.split_text(text)


def check_all(text, size, overlap, separators=None, keep_separator=True):
    got, offsets = chunk_text_with_offsets(text, size, overlap, separators, keep_separator)
    assert got == chunk_text(text, size, overlap, separators, keep_separator)
    assert got == langchain_chunks(text, size, overlap, separators, keep_separator)
    assert got == reference.chunk_text(text, size, overlap, separators, keep_separator)
    assert len(offsets) == len(got)
    if keep_separator is not False:
        for off, chunk in zip(offsets, got):
            assert text[off : off + len(chunk)] == chunk
        assert offsets == sorted(offsets)
    else:
        for off, chunk in zip(offsets, got):
            assert text[off] == chunk[0]
    return got


# Characters that exercise separators, Python's whitespace (str.strip strips \x1c and \u3000),
# non-Latin-1 text (UCS-2 buffers) and astral characters (UCS-4 buffers).
ALPHABET = st.sampled_from(list("ab c\n\n\t.") + ["\x1c", "\u3000", "é", "中", "😀", "\r\n", "  "])
SEPARATOR_SETS = st.sampled_from(
    [None, ["\n\n", "\n", " ", ""], ["\n", " "], [".", " ", ""], ["ab", "b", ""], [" "], ["😀", "中", ""], ["\n\n"]]
)
KEEP = st.sampled_from([True, False, "start", "end"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.lists(ALPHABET, max_size=120).map("".join),
    size=st.integers(1, 40),
    overlap_frac=st.floats(0, 0.99),
    separators=SEPARATOR_SETS,
    keep=KEEP,
)
def test_matches_langchain_on_random_text(text, size, overlap_frac, separators, keep):
    overlap = min(int(size * overlap_frac), size - 1)
    check_all(text, size, overlap, separators, keep)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=300), size=st.integers(1, 80), overlap=st.integers(0, 79), keep=KEEP)
def test_matches_langchain_on_arbitrary_unicode(text, size, overlap, keep):
    overlap = min(overlap, size - 1)
    check_all(text, size, overlap, None, keep)


def _stdlib_file(name: str) -> str:
    with open(os.path.join(sysconfig.get_paths()["stdlib"], name), encoding="utf-8") as f:
        return f.read()


MARKDOWN = """# Title

Some *markdown* text with a [link](https://example.org) and `code`.

## Section

- item one
- item two with a much longer line that keeps going and going so that it needs splitting on spaces

```python
def f(x):
    return x * 2
```

Ünïcödé paragraph: 日本語のテキスト、絵文字 😀🎉 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 mathematical letters.
"""


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(inspect.getdoc(os), id="prose"),
        pytest.param(_stdlib_file("textwrap.py"), id="code"),
        pytest.param(MARKDOWN * 3, id="markdown-unicode"),
        pytest.param("", id="empty"),
        pytest.param("x" * 1234, id="no-separators"),
        pytest.param("   \n\n \t \n  ", id="only-whitespace"),
        pytest.param("😀" * 700 + " 中文" * 50, id="astral"),
    ],
)
@pytest.mark.parametrize("size,overlap", [(500, 50), (100, 0), (37, 36), (5, 2), (1, 0)])
def test_matches_langchain_on_documents(text, size, overlap):
    chunks = check_all(text, size, overlap)
    if text.strip():
        assert chunks


@pytest.mark.parametrize("keep", [True, False, "end"])
def test_custom_separators_not_found(keep):
    text = "abcdefghij" * 30
    check_all(text, 50, 10, ["\n\n", "\n"], keep)     # no separator occurs, none is ""
    check_all("short", 50, 10, ["|"], keep)


def test_keep_separator_false_joins_over_runs_of_separators():
    text = "a\n\n\n\nb c\n\n\n\n\n\nd" * 5
    chunks = check_all(text, 12, 3, ["\n\n", " "], False)
    assert any("\n\n" in c for c in chunks)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(text=b"bytes", chunk_size=10, chunk_overlap=0), "text must be a str"),
        (dict(text="x", chunk_size=0, chunk_overlap=0), "chunk_size must be > 0"),
        (dict(text="x", chunk_size=-5, chunk_overlap=0), "chunk_size must be > 0"),
        (dict(text="x", chunk_size=10, chunk_overlap=-1), "chunk_overlap must be >= 0"),
        (dict(text="x", chunk_size=10, chunk_overlap=10), "chunk_overlap must be < chunk_size"),
        (dict(text="x", chunk_size=10, chunk_overlap=20), "chunk_overlap must be < chunk_size"),
        (dict(text="x", chunk_size=10.0, chunk_overlap=0), "chunk_size must be an int"),
        (dict(text="x", chunk_size=True, chunk_overlap=0), "chunk_size must be an int"),
        (dict(text="x", chunk_size=10, chunk_overlap=0, separators=["a", 3]), "separators must be a list of str"),
        (dict(text="x", chunk_size=10, chunk_overlap=0, separators="abc"), "separators must be a list of str"),
        (dict(text="x", chunk_size=10, chunk_overlap=0, keep_separator="middle"), "keep_separator must be"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        chunk_text(**kwargs)
    with pytest.raises(ValueError, match=match):
        chunk_text_with_offsets(**kwargs)


# --- the character index and the batched materialisation ------------------------------------
# chunk_text finds the positions of the character its leading separators are made of ("\n" by
# default) a slab at a time, ahead of the splitter, and turns decided chunks into strings in
# batches. _set_tuning shrinks both so that small texts cross many slab and batch seams (with
# one splitter thread or two: test_slabs_batches_and_threads_match_langchain, below).

from cython_ops import chunking as _chunking  # noqa: E402


INDEXED_SEPARATOR_SETS = st.sampled_from(
    [
        None,
        ["\n\n\n", "\n\n", "\n", " ", ""],
        ["\n\n", "\n"],
        ["\n", "\n\n", " ", ""],        # the longer run after the shorter one
        [" ", "\n\n", "\n", ""],        # indexed character is " "; "\n" searched directly
        ["aa", "a", "b", ""],
        ["中中", "中", ""],
        ["😀😀😀", "😀", " ", ""],
        ["\n\n", "x", "\n", ""],
    ]
)
RUNS_ALPHABET = st.sampled_from(["\n", "\n\n", "\n\n\n", " ", "  ", "a", "aa", "b", "bc ", "中", "中中", "😀", "😀😀", "é", "\t", "\u3000"])


@pytest.mark.parametrize("kind_char", ["", "é", "中", "😀"], ids=["ucs1-ascii", "ucs1", "ucs2", "ucs4"])
@pytest.mark.parametrize("keep", [True, False, "end"])
def test_large_document_across_default_slabs(kind_char, keep):
    # ~400,000 chars of stdlib code: several 65,536-char slabs and many 256-chunk batches, with
    # runs of newlines placed across the first slab boundaries.
    base = _stdlib_file("textwrap.py") + _stdlib_file("argparse.py")
    text = (kind_char + base) * 3
    for boundary in (65536, 2 * 65536, 3 * 65536):
        text = text[: boundary - 1] + "\n\n\n" + text[boundary - 1 :]
    chunks = check_all(text, 500, 50, None, keep)
    assert len(chunks) > 600
    check_all(text, 120, 0, ["\n\n\n", "\n", " ", ""], keep)


# --- the splitter thread ------------------------------------------------------------------------
# With 2 threads a second thread decides the chunks (no GIL) and hands them over in batches while
# the calling thread builds their strings. _set_threads(n, min_chars=0) forces either mode on any
# text; combined with tiny slabs and batches the hand-over happens at every odd place.


@pytest.fixture
def threads():
    def set_(n, slab=65536, flush=256):
        _chunking._set_threads(n, min_chars=0)
        _chunking._set_tuning(slab, flush)

    yield set_
    _chunking._set_threads()
    _chunking._set_tuning()


def test_default_thread_count_follows_affinity():
    cpus = len(os.sched_getaffinity(0))
    assert _chunking._default_threads() == (2 if cpus >= 2 else 1)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(RUNS_ALPHABET, max_size=150).map("".join),
    size=st.integers(1, 40),
    overlap_frac=st.floats(0, 0.99),
    separators=INDEXED_SEPARATOR_SETS,
    keep=KEEP,
    n_threads=st.sampled_from([1, 2]),
    slab=st.integers(1, 40),
    flush=st.integers(1, 5),
)
def test_slabs_batches_and_threads_match_langchain(threads, text, size, overlap_frac, separators, keep, n_threads, slab, flush):
    overlap = min(int(size * overlap_frac), size - 1)
    threads(n_threads, slab, flush)
    check_all(text, size, overlap, separators, keep)


@pytest.mark.parametrize("kind_char", ["", "é", "中", "😀"], ids=["ucs1-ascii", "ucs1", "ucs2", "ucs4"])
@pytest.mark.parametrize("n_threads,flush", [(1, 256), (2, 256), (2, 1), (2, 7), (2, 100000)])
def test_large_document_one_and_two_threads(threads, kind_char, n_threads, flush):
    base = _stdlib_file("textwrap.py") + _stdlib_file("argparse.py")
    # the odd character at a few places only: most batches are ASCII, some are not
    text = base + kind_char + base + kind_char * 3 + base
    threads(n_threads, 65536, flush)
    expected = langchain_chunks(text, 500, 50)
    assert chunk_text(text, 500, 50) == expected
    got, offsets = chunk_text_with_offsets(text, 500, 50)
    assert got == expected
    assert all(text[o : o + len(c)] == c for o, c in zip(offsets, got))
    assert chunk_text(text, 120, 0, ["\n\n\n", "\n", " ", ""], False) == langchain_chunks(
        text, 120, 0, ["\n\n\n", "\n", " ", ""], False
    )


def test_two_threads_from_concurrent_python_threads(threads):
    # Several callers at once, each with its own splitter thread: results stay exact.
    import concurrent.futures

    threads(2, 4096, 16)
    base = _stdlib_file("textwrap.py")
    texts = [base[i * 1000 :] + "😀" * i for i in range(8)]
    expected = [langchain_chunks(t, 300, 30) for t in texts]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: chunk_text(t, 300, 30), texts * 3))
    assert got == expected * 3


def test_bad_input_with_two_threads(threads):
    threads(2)
    with pytest.raises(ValueError, match="chunk_overlap must be <"):
        chunk_text("abc " * 1000, 10, 10)
    with pytest.raises(ValueError, match="text must be a str"):
        chunk_text(b"bytes " * 1000, 10, 1)
    with pytest.raises(ValueError, match="keep_separator must be"):
        chunk_text_with_offsets("abc " * 1000, 10, 1, keep_separator="middle")
