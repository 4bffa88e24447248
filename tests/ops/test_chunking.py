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
        ["\n\n", "\naa", "\n中", "\n", " ", ""],    # literals that start with the indexed character
        ["\na", "\n\n", "a\n", "\n", ""],
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


@pytest.mark.parametrize("kind_char", ["", "中"], ids=["ucs1-ascii", "ucs2"])
def test_document_of_a_few_slabs_indexed_whole(kind_char):
    # Texts of up to 4 slabs (262,144 chars at the default 65,536) are indexed in one go; the
    # splitter's index hints (the position each recursion starts at) must give the same chunks.
    base = _stdlib_file("textwrap.py") + _stdlib_file("argparse.py")
    text = (kind_char + base) * 2
    text = text[: 65535] + "\n\n\n" + text[65535:]
    assert 65536 < len(text) <= 4 * 65536
    for keep in (True, False, "end"):
        check_all(text, 500, 50, None, keep)
        check_all(text, 200, 20, ["\n\n\n", "\n\n", "\n", " ", ""], keep)


def test_successive_calls_share_no_state():
    # chunk_text keeps one splitter between calls: a call with other arguments, a failed call or
    # a batch in between must not change the next call's result.
    text = _stdlib_file("textwrap.py")
    expected = langchain_chunks(text, 300, 30)
    assert chunk_text(text, 300, 30) == expected
    assert chunk_text("a b " * 500, 7, 3, [" ", ""], False) == langchain_chunks("a b " * 500, 7, 3, [" ", ""], False)
    with pytest.raises(ValueError):
        chunk_text(text, 10, 10)
    with pytest.raises(ValueError):
        chunk_text(text, 10, 1, ["\n#{1,6} ", "x"], is_separator_regex=True, keep_separator="middle")
    assert chunk_texts([text, "", text[:1000]], 300, 30)[0] == expected
    got, offsets = chunk_text_with_offsets(text, 300, 30)
    assert got == expected and all(text[o : o + len(c)] == c for o, c in zip(offsets, got))
    assert chunk_text(text, 300, 30) == expected
    assert chunk_text("", 300, 30) == []


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


# --- batches: chunk_texts / chunk_texts_with_offsets ------------------------------------------
# One call for many documents; with 2 threads the splitter thread decides the chunks of the next
# documents while the caller builds the strings of the previous ones (end-of-document marks in
# the hand-over batches).

from cython_ops import MARKDOWN_SEPARATORS, chunk_texts, chunk_texts_with_offsets  # noqa: E402


def check_batch(texts, size, overlap, separators=None, keep=True):
    got = chunk_texts(texts, size, overlap, separators, keep)
    expected = [chunk_text(t, size, overlap, separators, keep) for t in texts]
    assert got == expected
    pieces, offsets = chunk_texts_with_offsets(texts, size, overlap, separators, keep)
    assert pieces == expected
    assert offsets == [chunk_text_with_offsets(t, size, overlap, separators, keep)[1] for t in texts]
    return got


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.lists(RUNS_ALPHABET, max_size=60).map("".join), max_size=8),
    size=st.integers(1, 30),
    overlap_frac=st.floats(0, 0.99),
    separators=INDEXED_SEPARATOR_SETS,
    keep=KEEP,
    n_threads=st.sampled_from([1, 2]),
    flush=st.integers(1, 5),
)
def test_batch_equals_per_text(threads, texts, size, overlap_frac, separators, keep, n_threads, flush):
    overlap = min(int(size * overlap_frac), size - 1)
    threads(n_threads, 7, flush)
    got = check_batch(texts, size, overlap, separators, keep)
    assert got == [langchain_chunks(t, size, overlap, separators, keep) for t in texts]


@pytest.mark.parametrize("n_threads,flush", [(1, 256), (2, 256), (2, 1), (2, 100000)])
def test_batch_of_files(threads, n_threads, flush):
    threads(n_threads, 65536, flush)
    texts = [_stdlib_file(name) for name in ("textwrap.py", "argparse.py", "os.py", "this.py")]
    texts = texts + ["", "   \n ", "😀 中" * 300] + texts[:2]
    got = check_batch(texts, 500, 50)
    assert got == [langchain_chunks(t, 500, 50) for t in texts]
    pieces, offsets = chunk_texts_with_offsets(texts, 500, 50)
    for text, ps, offs in zip(texts, pieces, offsets):
        assert all(text[o : o + len(p)] == p for p, o in zip(ps, offs))


def test_batch_default_threads_long_batch():
    # The default mode: many files adding up to more than the two-thread threshold.
    texts = [_stdlib_file(name) for name in ("argparse.py", "textwrap.py", "typing.py", "inspect.py")] * 3
    assert sum(map(len, texts)) >= 262144
    assert chunk_texts(texts, 500, 50) == [langchain_chunks(t, 500, 50) for t in texts]


def test_batch_empty_and_iterables():
    assert chunk_texts([], 100, 10) == []
    assert chunk_texts_with_offsets([], 100, 10) == ([], [])
    assert chunk_texts(["", ""], 100, 10) == [[], []]
    assert chunk_texts_with_offsets(["", "a b"], 100, 10) == ([[], ["a b"]], [[], [0]])
    assert chunk_texts(iter(["a b", "c"]), 100, 10) == [["a b"], ["c"]]
    assert chunk_texts(("x",), 100, 10) == [["x"]]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(chunk_size=0, chunk_overlap=0), "chunk_size must be > 0"),
        (dict(chunk_size=10, chunk_overlap=-1), "chunk_overlap must be >= 0"),
        (dict(chunk_size=10, chunk_overlap=10), "chunk_overlap must be < chunk_size"),
        (dict(chunk_size=10.0, chunk_overlap=0), "chunk_size must be an int"),
        (dict(chunk_size=10, chunk_overlap=0, separators=["a", 3]), "separators must be a list of str"),
        (dict(chunk_size=10, chunk_overlap=0, separators="abc"), "separators must be a list of str"),
        (dict(chunk_size=10, chunk_overlap=0, keep_separator="middle"), "keep_separator must be"),
    ],
)
@pytest.mark.parametrize("fn", [chunk_texts, chunk_texts_with_offsets])
def test_batch_bad_input_same_errors(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        chunk_text("x", **kwargs)
    with pytest.raises(ValueError, match=match):
        fn(["x", "y"], **kwargs)


@pytest.mark.parametrize("fn", [chunk_texts, chunk_texts_with_offsets])
def test_batch_bad_texts(fn):
    with pytest.raises(ValueError, match="text must be a str, got bytes"):
        fn(["ok", b"bytes"], 10, 0)
    with pytest.raises(ValueError, match="texts must be a list of str"):
        fn("a string", 10, 0)
    with pytest.raises(TypeError):
        fn(None, 10, 0)


# --- regex separators and Markdown ----------------------------------------------------------------
# A re.Pattern separator (or every str one with is_separator_regex=True) is a regex, as in
# LangChain with is_separator_regex=True; MARKDOWN_SEPARATORS are LangChain's Language.MARKDOWN
# separators, so chunk_text(..., MARKDOWN_SEPARATORS) is RecursiveCharacterTextSplitter
# .from_language(Language.MARKDOWN, ...).


def langchain_markdown(text, size, overlap, keep=True):
    splitter = lc.RecursiveCharacterTextSplitter.from_language(
        lc.Language.MARKDOWN, chunk_size=size, chunk_overlap=overlap, keep_separator=keep
    )
    return splitter.split_text(text)


def check_markdown(text, size, overlap, keep=True):
    got, offsets = chunk_text_with_offsets(text, size, overlap, MARKDOWN_SEPARATORS, keep)
    assert got == langchain_markdown(text, size, overlap, keep)
    assert got == chunk_text(text, size, overlap, MARKDOWN_SEPARATORS, keep)
    if keep is not False:
        assert all(text[o : o + len(c)] == c for o, c in zip(offsets, got))
    return got


def test_markdown_separators_are_langchains():
    patterns = [s.pattern if hasattr(s, "pattern") else s for s in MARKDOWN_SEPARATORS]
    assert patterns == lc.RecursiveCharacterTextSplitter.get_separators_for_language(lc.Language.MARKDOWN)


_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_MARKDOWN_FILES = ["README.md"] + sorted(
    os.path.join("docs", name) for name in os.listdir(os.path.join(_ROOT, "docs")) if name.endswith(".md")
)


@pytest.mark.parametrize("path", _MARKDOWN_FILES)
@pytest.mark.parametrize("size,overlap", [(800, 100), (500, 50), (120, 10)])
@pytest.mark.parametrize("keep", [True, False, "end"])
def test_markdown_matches_langchain_on_repo_docs(path, size, overlap, keep):
    with open(os.path.join(_ROOT, path), encoding="utf-8") as f:
        text = f.read()
    assert check_markdown(text, size, overlap, keep)


def test_markdown_splits_on_headings():
    text = "# A\n\nintro " * 20 + "\n## B\n\n" + "body " * 50 + "\n### C\n" + "more " * 30
    chunks = check_markdown(text, 200, 0)
    assert any(c.startswith("## B") for c in chunks) and any(c.startswith("### C") for c in chunks)


MARKDOWN_ALPHABET = st.sampled_from(
    ["\n", "\n\n", "# ", "## ", "###### ", "####### ", "#", "```\n", "```", "***", "****", "**", "---", "-----",
     "--", "___", "____", "_", "*", " ", "  ", "word", "a", "b c", "é", "中", "😀", "\t", "- item", "> q"]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(MARKDOWN_ALPHABET, max_size=120).map("".join),
    size=st.integers(1, 60),
    overlap_frac=st.floats(0, 0.99),
    keep=KEEP,
    n_threads=st.sampled_from([1, 2]),
    slab=st.integers(1, 40),
)
def test_markdown_matches_langchain_on_generated_markdown(threads, text, size, overlap_frac, keep, n_threads, slab):
    overlap = min(int(size * overlap_frac), size - 1)
    threads(n_threads, slab, 3)
    check_markdown(text, size, overlap, keep)


def test_markdown_generated_document_large():
    import random

    rng = random.Random(5)
    parts = []
    for i in range(400):
        parts.append("\n" + "#" * rng.randint(1, 7) + f" Heading {i}\n")
        for _ in range(rng.randint(0, 4)):
            parts.append(" ".join(rng.choice(["lorem", "ipsum", "dolor", "é", "😀", "`x`"]) for _ in range(rng.randint(3, 90))) + "\n\n")
        if rng.random() < 0.3:
            parts.append("```python\n" + "x = 1\n" * rng.randint(1, 30) + "```\n")
        if rng.random() < 0.2:
            parts.append("\n" + rng.choice("*-_") * rng.randint(2, 6) + "\n")
    text = "".join(parts)
    for size, overlap in [(800, 100), (500, 50), (64, 8)]:
        for keep in (True, False, "end"):
            check_markdown(text, size, overlap, keep)
    texts = [text[i : i + 5000] for i in range(0, len(text), 5000)]
    assert chunk_texts(texts, 500, 50, MARKDOWN_SEPARATORS) == [langchain_markdown(t, 500, 50) for t in texts]


def test_markdown_text_splitter_uses_literals():
    # LangChain's MarkdownTextSplitter passes the same strings without is_separator_regex: they
    # are literals there (headings never split); the plain strings reproduce it.
    literal = [s.pattern if hasattr(s, "pattern") else s for s in MARKDOWN_SEPARATORS]
    with open(os.path.join(_ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    splitter = lc.MarkdownTextSplitter(chunk_size=500, chunk_overlap=50)
    assert chunk_text(text, 500, 50, literal) == splitter.split_text(text)


REGEX_SEPARATOR_SETS = st.sampled_from(
    [
        ["\n#{1,6} ", "\n\n", " ", ""],
        ["a+b", "b*c", "\n", ""],
        ["ab?c", "x{2,}", " ", ""],
        ["a|bc|b", "\\.", ""],
        ["c{2}", "a{,2}b", ""],
        ["\\*\\*+", "\\n\\n", "\n", ""],
        ["é+", "中{1,2}", "😀", " "],
        ["a*a", "b{1,3}b", ""],
    ]
)
REGEX_ALPHABET = st.sampled_from(list("aabbcx .\n*#") + ["\n# ", "\n## ", "é", "中", "😀", "ab", "abc", "\n\n"])


@settings(max_examples=400, deadline=None)
@given(
    text=st.lists(REGEX_ALPHABET, max_size=100).map("".join),
    size=st.integers(1, 40),
    overlap_frac=st.floats(0, 0.99),
    separators=REGEX_SEPARATOR_SETS,
    keep=KEEP,
)
def test_regex_separators_match_langchain(text, size, overlap_frac, separators, keep):
    overlap = min(int(size * overlap_frac), size - 1)
    expected = lc.RecursiveCharacterTextSplitter(
        chunk_size=size, chunk_overlap=overlap, separators=separators, keep_separator=keep, is_separator_regex=True
    ).split_text(text)
    assert chunk_text(text, size, overlap, separators, keep, is_separator_regex=True) == expected
    import re

    compiled = [re.compile(s) for s in separators]
    assert chunk_text(text, size, overlap, compiled, keep) == expected
    got, offsets = chunk_text_with_offsets(text, size, overlap, compiled, keep)
    assert got == expected
    if keep is not False:
        assert all(text[o : o + len(c)] == c for o, c in zip(offsets, got))


@pytest.mark.parametrize("pattern", ["a.b", "[ab]", "(ab)", "^a", "a$", "\\d", "a*?", "a++", "a**", "*a", "a{3}{2}", "a{3,1}", "x*", "a|", "\\"])
def test_unsupported_regex_separators_raise(pattern):
    import re

    with pytest.raises(ValueError, match="regex separator"):
        chunk_text("abc", 10, 0, [pattern], is_separator_regex=True)
    if pattern not in ("a**", "*a", "a{3}{2}", "a{3,1}", "\\", "a++"):   # ones re itself accepts
        with pytest.raises(ValueError, match="regex separator"):
            chunk_texts(["abc"], 10, 0, [re.compile(pattern)])
    with pytest.raises(ValueError, match="separators must be a list of str"):
        chunk_text("abc", 10, 0, [re.compile(b"a")])
