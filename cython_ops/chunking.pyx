# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Recursive separator text chunking, output-identical to LangChain's RecursiveCharacterTextSplitter.

Single-pass design: the text is never split into Python strings while deciding the chunks.
Every piece of LangChain's algorithm is a range ``[start, end)`` of code points of the input,
separators are found with ``memchr``/``wmemchr`` on the string's own buffer (PEP 393 kind 1/2/4),
and the merge-with-overlap step (``_merge_splits``) runs on piece lengths. Only the final chunks
are materialised, as substrings. The whole range computation runs without the GIL.
"""

from libcpp.vector cimport vector
from libc.string cimport memchr, memcpy

cdef extern from "Python.h":
    int PyUnicode_READY(object o) except -1
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    Py_UCS4 PyUnicode_READ(int kind, const void* data, Py_ssize_t index) nogil
    bint Py_UNICODE_ISSPACE(Py_UCS4 ch) nogil
    object PyUnicode_Substring(object s, Py_ssize_t start, Py_ssize_t end)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    bint PyUnicode_IS_ASCII(object o)

cdef extern from "Python.h":
    ctypedef unsigned short Py_UCS2

cdef extern from "<wchar.h>":
    ctypedef int wchar_t
    const wchar_t* wmemchr(const wchar_t* s, wchar_t c, size_t n) nogil

DEFAULT_SEPARATORS = ("\n\n", "\n", " ", "")

# keep_separator modes (LangChain: False, True/"start", "end")
cdef enum:
    KEEP_NONE = 0
    KEEP_START = 1
    KEEP_END = 2


cdef struct Piece:
    Py_ssize_t start
    Py_ssize_t end


cdef struct Chunk:
    # A chunk is text[start:end] when plo < 0; otherwise (keep_separator=False with runs of
    # separators between pieces) it is separators[sep].join(pieces[plo:phi]).strip().
    Py_ssize_t start
    Py_ssize_t end
    Py_ssize_t plo
    Py_ssize_t phi
    int sep


cdef class _Splitter:
    cdef const void* data
    cdef int kind
    cdef Py_ssize_t chunk_size
    cdef Py_ssize_t overlap
    cdef int keep
    cdef int nseps
    cdef vector[Py_UCS4] sep_chars   # all separators, concatenated
    cdef vector[Py_ssize_t] sep_off
    cdef vector[Py_ssize_t] sep_len
    cdef vector[Piece] pieces        # stack of pending "good splits", one segment per recursion level
    cdef vector[Piece] joined        # pieces of non-contiguous chunks (keep_separator=False only)
    cdef vector[Chunk] chunks

    # --- character search on the PEP 393 buffer -------------------------------------------
    cdef inline Py_ssize_t find_char(self, Py_UCS4 c, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
        """First index in [start, stop) holding c, or -1."""
        cdef const unsigned char* p1
        cdef const Py_UCS2* p2
        cdef const wchar_t* p4
        cdef const void* hit
        cdef Py_ssize_t i
        if start >= stop:
            return -1
        if self.kind == 1:
            if c > 255:
                return -1
            p1 = <const unsigned char*> self.data
            hit = memchr(p1 + start, <int> c, <size_t> (stop - start))
            return -1 if hit == NULL else <Py_ssize_t> (<const unsigned char*> hit - p1)
        elif self.kind == 2:
            if c > 0xFFFF:
                return -1
            p2 = <const Py_UCS2*> self.data
            for i in range(start, stop):
                if p2[i] == c:
                    return i
            return -1
        else:
            p4 = <const wchar_t*> self.data
            hit = wmemchr(p4 + start, <wchar_t> c, <size_t> (stop - start))
            return -1 if hit == NULL else <Py_ssize_t> (<const wchar_t*> hit - p4)

    cdef Py_ssize_t find_sep(self, int si, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
        """First occurrence of separator si fully inside [start, end), or -1."""
        cdef Py_ssize_t m = self.sep_len[si]
        cdef Py_ssize_t off = self.sep_off[si]
        cdef Py_ssize_t last = end - m      # last possible start position (inclusive)
        cdef Py_ssize_t pos = start
        cdef Py_ssize_t j
        cdef Py_UCS4 first = self.sep_chars[off]
        cdef bint ok
        while pos <= last:
            pos = self.find_char(first, pos, last + 1)
            if pos < 0:
                return -1
            ok = True
            for j in range(1, m):
                if PyUnicode_READ(self.kind, self.data, pos + j) != self.sep_chars[off + j]:
                    ok = False
                    break
            if ok:
                return pos
            pos += 1
        return -1

    # --- LangChain's _split_text -----------------------------------------------------------
    cdef void split_range(self, Py_ssize_t s, Py_ssize_t e, int level) noexcept nogil:
        cdef int chosen = -1
        cdef int next_level = self.nseps
        cdef int i
        cdef Py_ssize_t occ = -1
        cdef Py_ssize_t m, p, ps, nxt, base
        for i in range(level, self.nseps):
            if self.sep_len[i] == 0:
                chosen = i
                break
            occ = self.find_sep(i, s, e)
            if occ >= 0:
                chosen = i
                next_level = i + 1
                break
        if chosen < 0:
            # No separator occurs: LangChain splits on separators[-1], which yields the whole range.
            chosen = self.nseps - 1
            occ = -1
        base = <Py_ssize_t> self.pieces.size()
        m = self.sep_len[chosen]
        if m == 0:
            for p in range(s, e):
                self.take_piece(p, p + 1, base, chosen, next_level)
        elif occ < 0:
            if e > s:
                self.take_piece(s, e, base, chosen, next_level)
        else:
            ps = s
            while occ >= 0:
                if self.keep == KEEP_START:
                    if occ > ps:
                        self.take_piece(ps, occ, base, chosen, next_level)
                    ps = occ
                elif self.keep == KEEP_END:
                    self.take_piece(ps, occ + m, base, chosen, next_level)
                    ps = occ + m
                else:
                    if occ > ps:
                        self.take_piece(ps, occ, base, chosen, next_level)
                    ps = occ + m
                nxt = occ + m
                occ = self.find_sep(chosen, nxt, e)
            if e > ps:
                self.take_piece(ps, e, base, chosen, next_level)
        if <Py_ssize_t> self.pieces.size() > base:
            self.merge(base, chosen)

    cdef inline void take_piece(self, Py_ssize_t ps, Py_ssize_t pe, Py_ssize_t base, int chosen,
                                int next_level) noexcept nogil:
        cdef Piece piece
        cdef Chunk raw
        if pe - ps < self.chunk_size:
            piece.start = ps
            piece.end = pe
            self.pieces.push_back(piece)
            return
        if <Py_ssize_t> self.pieces.size() > base:
            self.merge(base, chosen)
        if next_level >= self.nseps:
            # Too long and no finer separator left: LangChain emits it as is (not stripped).
            raw.start = ps
            raw.end = pe
            raw.plo = -1
            raw.phi = -1
            raw.sep = 0
            self.chunks.push_back(raw)
        else:
            self.split_range(ps, pe, next_level)

    # --- LangChain's _merge_splits on pieces[base:] -----------------------------------------
    cdef void merge(self, Py_ssize_t base, int chosen) noexcept nogil:
        cdef Py_ssize_t n = <Py_ssize_t> self.pieces.size()
        cdef Py_ssize_t ms = 0 if self.keep != KEEP_NONE else self.sep_len[chosen]
        cdef Py_ssize_t lo = base
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t i, length
        for i in range(base, n):
            length = self.pieces[i].end - self.pieces[i].start
            if total + length + (ms if i > lo else 0) > self.chunk_size:
                if i > lo:
                    self.emit(lo, i, chosen, ms)
                    while total > self.overlap or (
                        total + length + (ms if i > lo else 0) > self.chunk_size and total > 0
                    ):
                        total -= (self.pieces[lo].end - self.pieces[lo].start) + (ms if i - lo > 1 else 0)
                        lo += 1
            total += length + (ms if i + 1 - lo > 1 else 0)
        if n > lo:
            self.emit(lo, n, chosen, ms)
        self.pieces.resize(base)

    cdef void emit(self, Py_ssize_t lo, Py_ssize_t hi, int chosen, Py_ssize_t ms) noexcept nogil:
        """_join_docs: join pieces[lo:hi], strip whitespace, drop if empty."""
        cdef Chunk c
        cdef Py_ssize_t j, a, b
        cdef bint contiguous = True
        if ms > 0:
            for j in range(lo, hi - 1):
                if self.pieces[j + 1].start - self.pieces[j].end != ms:
                    contiguous = False
                    break
        if not contiguous:
            c.start = -1
            c.end = -1
            c.plo = <Py_ssize_t> self.joined.size()
            for j in range(lo, hi):
                self.joined.push_back(self.pieces[j])
            c.phi = <Py_ssize_t> self.joined.size()
            c.sep = chosen
            self.chunks.push_back(c)
            return
        a = self.pieces[lo].start
        b = self.pieces[hi - 1].end
        while a < b and Py_UNICODE_ISSPACE(PyUnicode_READ(self.kind, self.data, a)):
            a += 1
        while b > a and Py_UNICODE_ISSPACE(PyUnicode_READ(self.kind, self.data, b - 1)):
            b -= 1
        if a < b:
            c.start = a
            c.end = b
            c.plo = -1
            c.phi = -1
            c.sep = chosen
            self.chunks.push_back(c)


cdef int _keep_mode(object keep_separator) except -1:
    if keep_separator is True or keep_separator == "start":
        return KEEP_START
    if keep_separator == "end":
        return KEEP_END
    if keep_separator is False:
        return KEEP_NONE
    raise ValueError(f"keep_separator must be True, False, 'start' or 'end', got {keep_separator!r}")


cdef _Splitter _run(object text, object chunk_size, object chunk_overlap, object separators,
                    object keep_separator):
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    for name, value in (("chunk_size", chunk_size), ("chunk_overlap", chunk_overlap)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    if chunk_overlap < 0:
        raise ValueError(f"chunk_overlap must be >= 0, got {chunk_overlap}")
    if chunk_overlap >= chunk_size:
        raise ValueError(f"chunk_overlap must be < chunk_size, got overlap {chunk_overlap} >= size {chunk_size}")
    if separators is None or (isinstance(separators, (list, tuple)) and len(separators) == 0):
        separators = DEFAULT_SEPARATORS     # LangChain: `separators or [...]`
    if not isinstance(separators, (list, tuple)) or not all(isinstance(s, str) for s in separators):
        raise ValueError("separators must be a list of str")

    cdef _Splitter sp = _Splitter()
    PyUnicode_READY(text)
    sp.kind = PyUnicode_KIND(text)
    sp.data = PyUnicode_DATA(text)
    sp.chunk_size = chunk_size
    sp.overlap = chunk_overlap
    sp.keep = _keep_mode(keep_separator)
    sp.nseps = len(separators)
    cdef str sep
    cdef Py_ssize_t total = 0
    for sep in separators:
        sp.sep_off.push_back(total)
        sp.sep_len.push_back(len(sep))
        for ch in sep:
            sp.sep_chars.push_back(ord(ch))
        total += len(sep)
    sp.sep_chars.push_back(0)   # keeps sep_chars[off] valid for empty separators
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    with nogil:
        sp.split_range(0, n, 0)
    return sp



cdef object _substring(object text, int kind, const void* data, bint ascii, Py_ssize_t a, Py_ssize_t b):
    """text[a:b] (b > a). CPython's own slicing scans wide strings for their max char with an
    early-exit loop; an OR-reduction (vectorisable) gives the same canonical kind, because each
    kind boundary (128, 256, 65536) is a power of two."""
    cdef Py_ssize_t n = b - a, i
    cdef object res
    cdef const unsigned char* s1
    cdef const Py_UCS2* s2
    cdef const unsigned int* s4
    cdef unsigned char* d1
    cdef Py_UCS2* d2
    cdef unsigned int mx = 0
    if kind == 1:
        s1 = (<const unsigned char*> data) + a
        if not ascii:
            for i in range(n):
                mx |= s1[i]
        res = PyUnicode_New(n, 127 if ascii or mx < 128 else 255)
        memcpy(PyUnicode_DATA(res), s1, n)
        return res
    if kind == 2:
        s2 = (<const Py_UCS2*> data) + a
        for i in range(n):
            mx |= s2[i]
        if mx >= 256:
            res = PyUnicode_New(n, 65535)
            memcpy(PyUnicode_DATA(res), s2, n * 2)
            return res
        res = PyUnicode_New(n, 127 if mx < 128 else 255)
        d1 = <unsigned char*> PyUnicode_DATA(res)
        for i in range(n):
            d1[i] = <unsigned char> s2[i]
        return res
    s4 = (<const unsigned int*> data) + a
    for i in range(n):
        mx |= s4[i]
    if mx >= 65536:
        res = PyUnicode_New(n, 0x10FFFF)
        memcpy(PyUnicode_DATA(res), s4, n * 4)
    elif mx >= 256:
        res = PyUnicode_New(n, 65535)
        d2 = <Py_UCS2*> PyUnicode_DATA(res)
        for i in range(n):
            d2[i] = <Py_UCS2> s4[i]
    else:
        res = PyUnicode_New(n, 127 if mx < 128 else 255)
        d1 = <unsigned char*> PyUnicode_DATA(res)
        for i in range(n):
            d1[i] = <unsigned char> s4[i]
    return res


cdef list _materialise(_Splitter sp, str text, list separators, list offsets):
    cdef list out = []
    cdef Chunk c
    cdef Py_ssize_t j, pos, lead, ci
    cdef str joined, stripped
    cdef bint ascii = PyUnicode_IS_ASCII(text)
    for ci in range(<Py_ssize_t> sp.chunks.size()):
        c = sp.chunks[ci]
        if c.plo < 0:
            out.append(_substring(text, sp.kind, sp.data, ascii, c.start, c.end))
            if offsets is not None:
                offsets.append(c.start)
            continue
        # keep_separator=False and a run of separators was dropped between pieces: build the join.
        sep = separators[c.sep]
        parts = [PyUnicode_Substring(text, sp.joined[j].start, sp.joined[j].end) for j in range(c.plo, c.phi)]
        joined = sep.join(parts)
        stripped = joined.strip()
        if not stripped:
            continue
        out.append(stripped)
        if offsets is not None:
            # Where the chunk's first character comes from in `text`.
            lead = len(joined) - len(joined.lstrip())
            pos = sp.joined[c.plo].start
            for j in range(c.plo, c.phi):
                plen = sp.joined[j].end - sp.joined[j].start
                if lead < plen:
                    pos = sp.joined[j].start + lead
                    break
                lead -= plen
                if j + 1 < c.phi and lead < len(sep):
                    pos = sp.joined[j].end + lead
                    break
                lead -= len(sep)
            offsets.append(pos)
    return out


def chunk_text(text, chunk_size, chunk_overlap, separators=None, keep_separator=True):
    """chunk_text(text: str, chunk_size: int, chunk_overlap: int, separators: list[str] | None = None, keep_separator: bool | str = True) -> list[str]

    The chunks of ``RecursiveCharacterTextSplitter(chunk_size=..., chunk_overlap=...,
    separators=..., keep_separator=...).split_text(text)`` (length = ``len``, literal separators,
    whitespace stripped). Raises ValueError on bad arguments (including overlap >= size).
    """
    sp = _run(text, chunk_size, chunk_overlap, separators, keep_separator)
    seps = list(separators) if separators else list(DEFAULT_SEPARATORS)
    return _materialise(sp, text, seps, None)


def chunk_text_with_offsets(text, chunk_size, chunk_overlap, separators=None, keep_separator=True):
    """chunk_text_with_offsets(text: str, chunk_size: int, chunk_overlap: int, separators: list[str] | None = None, keep_separator: bool | str = True) -> tuple[list[str], list[int]]

    Like chunk_text, plus the start offset of each chunk in ``text``. With keep_separator true
    (the default) ``text[off:off + len(chunk)] == chunk``; with keep_separator=False a chunk may
    join pieces across a run of separators and the offset is where its first character is.
    """
    sp = _run(text, chunk_size, chunk_overlap, separators, keep_separator)
    seps = list(separators) if separators else list(DEFAULT_SEPARATORS)
    offsets = []
    chunks = _materialise(sp, text, seps, offsets)
    return chunks, offsets

