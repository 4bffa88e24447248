# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Recursive separator text chunking, output-identical to LangChain's RecursiveCharacterTextSplitter.

Single-pass design: the text is never split into Python strings while deciding the chunks.
Every piece of LangChain's algorithm is a range ``[start, end)`` of code points of the input,
and the merge-with-overlap step (``_merge_splits``) runs on piece lengths.

- The character the leading separators are made of ("\n" for the defaults, so "\n\n" and
  "\n") is indexed once: its positions are collected with SIMD compares (AVX2 when the CPU has
  it, else SSE2) on the string's own PEP 393 buffer, one slab ahead of the splitter. Runs such as
  "\n\n" are consecutive index entries, and the "\n" level inside a long paragraph reuses the
  index instead of rescanning. Other separators (" " in long lines) use memchr/wmemchr.
- Decided chunks are materialised in batches while their text is still in cache: one pass copies
  (narrowing UCS4/UCS2 to 1 byte) and OR-reduces into an ASCII string, redone with the right kind
  only for the rare non-ASCII chunk. The range computation runs without the GIL; the GIL is
  taken back only to create each batch of strings.
- Two threads (default when the process may run on 2+ CPUs, texts of 256 Ki code points and
  more; ``_set_threads`` for tests): a splitter thread runs the index scan and the range
  computation without ever taking the GIL and hands batches of FLUSH_CHUNKS decided chunks over a
  mutex-protected queue; the calling thread builds their strings meanwhile (as above), releasing
  the GIL while it waits. The splitting stays sequential (each merge depends on the previous
  chunk), so more threads would have nothing to do. Tried and dropped: narrowing ASCII chunks
  into a staging buffer on the splitter thread (cache-hot there) for a plain memcpy on the
  caller: slower (20.0 vs 18.5 ms best, 27.7 vs 22.5 ms median, interleaved in one process).

Profile on 21 MB of stdlib text (UCS4, 84 MB buffer, 56,686 chunks): the index scan is memory
bound (~5 ms), creating the chunk strings (allocation, page faults of fresh memory, copying)
is most of the rest; CPython's own slicing of the same substrings takes ~26 ms alone.

Many small texts (the stdlib's 1,790 .py files, one call each; perf): a zero-filled index vector
of n + 2 entries per call was 11% of the time (now an uninitialised buffer kept between calls),
storing each piece and chunk through a stack copy was half of split_range's time (a
store-forwarding stall; now written in place), and preparing the separators (validation, code
points, the indexed character) ran per call (now cached by the separators tuple: an empty
call went from 0.8 to 0.3 us). Below 256 Ki code points a second thread loses: a thread per
call costs ~50 us, and a persistent worker thread woken per call (tried) was no better (files
of 16 Ki+ code points on it: 75 vs 38 ms for the stdlib files), so small texts stay on the
calling thread; chunk_texts gives a batch of files one splitter thread instead (end-of-document
marks in the hand-over). Later (2026-12-06): the index scans prefetch 2 KiB ahead (the text is
read cold; the hardware prefetcher stops at each page), texts of up to 4 slabs are indexed whole
so idx_find runs an inline loop, each recursion is handed the index position its range starts at
(hint_k) instead of a binary search, and chunk_text keeps one splitter between calls and builds no
temporary lists (the GC counts them): 1.21x per file. Then: the "\n" level split and merged in
one pass (split_lines: no line goes through the pieces vector), split_range's loop for indexed
separators with its branches hoisted, merge without separator lengths when they are 0, the strip
of 1-byte texts 16 characters at a time (SSE2), and chunk_text's list made at its size: 1.15x
per file (docs/BENCHMARKS.md).

Regex separators (a re.Pattern, or str ones with is_separator_regex=True) cover what LangChain's
language separators use: characters, greedy ? * + {m,n} on one character and | at the top
level (MARKDOWN_SEPARATORS: "\\n#{1,6} ", "\\n\\\\*\\\\*\\\\*+\\n", ...). They are matched in
place by backtracking over (char, min, max) atoms, which finds exactly re's leftmost match;
unbounded rules such as "\\n---+\\n" could not be expanded into finitely many literals, and
listing "\\n# ", "\\n## ", ... as separate levels would split differently from one alternation.
"""

cimport cython
from libcpp.vector cimport vector
from libc.stdlib cimport malloc, free
from libc.string cimport memchr, memcpy
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.ref cimport Py_INCREF

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

cdef extern from *:
    """
    #include <stdint.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    /* Append bit positions of mask (chars i..i+31) to out[cnt...]; out needs 2 entries of slack.
       The first two are written without branching (most 32-char blocks of text hold 0-2 newlines). */
    #define SAGE_EXTRACT(mask32, i, out, cnt) do {                                   \
            uint64_t mm_ = (uint64_t)(mask32);                                      \
            Py_ssize_t pc_ = __builtin_popcountll(mm_);                             \
            (out)[(cnt)] = (i) + __builtin_ctzll(mm_ | (1ULL << 32)); mm_ &= mm_ - 1; \
            (out)[(cnt) + 1] = (i) + __builtin_ctzll(mm_ | (1ULL << 32)); mm_ &= mm_ - 1; \
            if (mm_) {                                                              \
                Py_ssize_t j_ = (cnt) + 2;                                          \
                while (mm_) { (out)[j_++] = (i) + __builtin_ctzll(mm_); mm_ &= mm_ - 1; } \
            }                                                                       \
            (cnt) += pc_;                                                           \
        } while (0)

    #if defined(__x86_64__) && defined(__GNUC__)
    #include <immintrin.h>
    #define SAGE_HAVE_AVX2_PATH 1
#ifndef SAGE_PF
#define SAGE_PF 2048
#endif
    static int sage_avx2 = -1;
    __attribute__((target("avx2,popcnt")))
    static Py_ssize_t sage_scan4_avx2(const uint32_t* p, Py_ssize_t i, Py_ssize_t stop, uint32_t c,
                                      Py_ssize_t* out, Py_ssize_t cnt) {
        const __m256i v = _mm256_set1_epi32((int)c);
        for (; i + 32 <= stop; i += 32) {
            _mm_prefetch((const char*)(p + i) + SAGE_PF, _MM_HINT_T0);
            _mm_prefetch((const char*)(p + i) + SAGE_PF + 64, _MM_HINT_T0);
            uint32_t m0 = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_loadu_si256((const __m256i*)(p + i)), v)));
            uint32_t m1 = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_loadu_si256((const __m256i*)(p + i + 8)), v)));
            uint32_t m2 = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_loadu_si256((const __m256i*)(p + i + 16)), v)));
            uint32_t m3 = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_loadu_si256((const __m256i*)(p + i + 24)), v)));
            uint32_t mask = m0 | (m1 << 8) | (m2 << 16) | (m3 << 24);
            SAGE_EXTRACT(mask, i, out, cnt);
        }
        for (; i < stop; i++) if (p[i] == c) out[cnt++] = i;
        return cnt;
    }
    __attribute__((target("avx2,popcnt")))
    static Py_ssize_t sage_scan2_avx2(const uint16_t* p, Py_ssize_t i, Py_ssize_t stop, uint32_t c,
                                      Py_ssize_t* out, Py_ssize_t cnt) {
        const __m256i v = _mm256_set1_epi16((short)c);
        for (; i + 32 <= stop; i += 32) {
            _mm_prefetch((const char*)(p + i) + SAGE_PF, _MM_HINT_T0);
            __m256i a = _mm256_cmpeq_epi16(_mm256_loadu_si256((const __m256i*)(p + i)), v);
            __m256i b = _mm256_cmpeq_epi16(_mm256_loadu_si256((const __m256i*)(p + i + 16)), v);
            /* packs works per 128-bit lane: restore the order of the four 8-char groups */
            __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi16(a, b), 0xD8);
            uint32_t mask = (uint32_t)_mm256_movemask_epi8(packed);
            SAGE_EXTRACT(mask, i, out, cnt);
        }
        for (; i < stop; i++) if (p[i] == c) out[cnt++] = i;
        return cnt;
    }
    __attribute__((target("avx2,popcnt")))
    static Py_ssize_t sage_scan1_avx2(const uint8_t* p, Py_ssize_t i, Py_ssize_t stop, uint32_t c,
                                      Py_ssize_t* out, Py_ssize_t cnt) {
        const __m256i v = _mm256_set1_epi8((char)c);
        for (; i + 32 <= stop; i += 32) {
            _mm_prefetch((const char*)(p + i) + SAGE_PF, _MM_HINT_T0);
            uint32_t mask = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i*)(p + i)), v));
            SAGE_EXTRACT(mask, i, out, cnt);
        }
        for (; i < stop; i++) if (p[i] == c) out[cnt++] = i;
        return cnt;
    }
    #endif

    /* Write to out[cnt...] the positions in [start, stop) of code point c in a PEP 393 buffer of
       the given kind (1, 2 or 4 bytes per char) and return the new count. out must have room
       for stop - start + 2 more entries. AVX2 when the CPU has it (checked once), else SSE2
       (x86-64 baseline), else scalar. */
    static Py_ssize_t sage_scan_char(int kind, const void* data, Py_ssize_t start, Py_ssize_t stop,
                                     uint32_t c, Py_ssize_t* out, Py_ssize_t cnt) {
        Py_ssize_t i = start;
    #ifdef SAGE_HAVE_AVX2_PATH
        if (sage_avx2 < 0) { __builtin_cpu_init(); sage_avx2 = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) ? 1 : 0; }
        if (sage_avx2 && kind == 4)
            return sage_scan4_avx2((const uint32_t*)data, start, stop, c, out, cnt);
        if (sage_avx2 && kind == 1)
            return c > 0xFF ? cnt : sage_scan1_avx2((const uint8_t*)data, start, stop, c, out, cnt);
        if (sage_avx2 && kind == 2)
            return c > 0xFFFF ? cnt : sage_scan2_avx2((const uint16_t*)data, start, stop, c, out, cnt);
    #endif
        if (kind == 4) {
            const uint32_t* p = (const uint32_t*)data;
    #if defined(__SSE2__)
            const __m128i v = _mm_set1_epi32((int)c);
            for (; i + 16 <= stop; i += 16) {
                __m128i a = _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i*)(p + i)), v);
                __m128i b = _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i*)(p + i + 4)), v);
                __m128i d = _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i*)(p + i + 8)), v);
                __m128i e = _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i*)(p + i + 12)), v);
                uint32_t mask = (uint32_t)_mm_movemask_epi8(
                    _mm_packs_epi16(_mm_packs_epi32(a, b), _mm_packs_epi32(d, e)));
                SAGE_EXTRACT(mask, i, out, cnt);
            }
    #endif
            for (; i < stop; i++) if (p[i] == c) out[cnt++] = i;
        } else if (kind == 2) {
            const uint16_t* p = (const uint16_t*)data;
            if (c > 0xFFFF) return cnt;
    #if defined(__SSE2__)
            const __m128i v = _mm_set1_epi16((short)c);
            for (; i + 16 <= stop; i += 16) {
                __m128i a = _mm_cmpeq_epi16(_mm_loadu_si128((const __m128i*)(p + i)), v);
                __m128i b = _mm_cmpeq_epi16(_mm_loadu_si128((const __m128i*)(p + i + 8)), v);
                uint32_t mask = (uint32_t)_mm_movemask_epi8(_mm_packs_epi16(a, b));
                SAGE_EXTRACT(mask, i, out, cnt);
            }
    #endif
            for (; i < stop; i++) if (p[i] == c) out[cnt++] = i;
        } else {
            const uint8_t* p = (const uint8_t*)data;
            if (c > 0xFF) return cnt;
    #if defined(__SSE2__)
            const __m128i v = _mm_set1_epi8((char)c);
            for (; i + 16 <= stop; i += 16) {
                uint32_t mask = (uint32_t)_mm_movemask_epi8(
                    _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)(p + i)), v));
                SAGE_EXTRACT(mask, i, out, cnt);
            }
    #endif
            for (; i < stop; i++) if (p[i] == c) out[cnt++] = i;
        }
        return cnt;
    }

    /* Copy n chars of a kind-2/4 buffer into a 1-byte buffer, returning the OR of all chars (the
       copy is only meaningful when that is < 256). One pass, vectorised by the compiler, with an
       AVX2 clone chosen at load time where the toolchain supports it. */
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
    #define SAGE_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define SAGE_CLONES
    #endif
    SAGE_CLONES static uint32_t sage_narrow4(const uint32_t* s, uint8_t* d, Py_ssize_t n) {
        uint32_t mx = 0;
        for (Py_ssize_t i = 0; i < n; i++) { mx |= s[i]; d[i] = (uint8_t)s[i]; }
        return mx;
    }
    SAGE_CLONES static uint32_t sage_narrow2(const uint16_t* s, uint8_t* d, Py_ssize_t n) {
        uint32_t mx = 0;
        for (Py_ssize_t i = 0; i < n; i++) { mx |= s[i]; d[i] = (uint8_t)s[i]; }
        return mx;
    }
    SAGE_CLONES static uint32_t sage_copy1(const uint8_t* s, uint8_t* d, Py_ssize_t n) {
        uint32_t mx = 0;
        for (Py_ssize_t i = 0; i < n; i++) { mx |= s[i]; d[i] = s[i]; }
        return mx;
    }

    /* str.strip()'s whitespace in a 1-byte (Latin-1) buffer, i.e. Py_UNICODE_ISSPACE below 256:
       9-13, 28-32, 0x85, 0xA0. 16 chars at a time: a char-by-char loop mispredicted its exit
       once per chunk end. */
    static inline int sage_ws1(uint8_t c) {
        return (uint8_t)(c - 9) <= 4 || (uint8_t)(c - 28) <= 4 || c == 0x85 || c == 0xA0;
    }
    #if defined(__SSE2__)
    static inline uint32_t sage_ws16(__m128i v) {
        const __m128i four = _mm_set1_epi8(4);
        __m128i a = _mm_sub_epi8(v, _mm_set1_epi8(9));
        __m128i b = _mm_sub_epi8(v, _mm_set1_epi8(28));
        __m128i m = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(a, four), a), _mm_cmpeq_epi8(_mm_min_epu8(b, four), b));
        m = _mm_or_si128(m, _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8((char)0x85)),
                                         _mm_cmpeq_epi8(v, _mm_set1_epi8((char)0xA0))));
        return (uint32_t)_mm_movemask_epi8(m);
    }
    #endif
    /* First index in [a, b) not holding whitespace (b if none). */
    static inline Py_ssize_t sage_lstrip1(const uint8_t* p, Py_ssize_t a, Py_ssize_t b) {
    #if defined(__SSE2__)
        while (a + 16 <= b) {
            uint32_t ws = sage_ws16(_mm_loadu_si128((const __m128i*)(p + a)));
            if (ws != 0xFFFF) return a + __builtin_ctz(~ws);
            a += 16;
        }
    #endif
        while (a < b && sage_ws1(p[a])) a++;
        return a;
    }
    /* One past the last index in [a, b) not holding whitespace (a if none). */
    static inline Py_ssize_t sage_rstrip1(const uint8_t* p, Py_ssize_t a, Py_ssize_t b) {
    #if defined(__SSE2__)
        while (b - 16 >= a) {
            uint32_t ws = sage_ws16(_mm_loadu_si128((const __m128i*)(p + b - 16)));
            if (ws != 0xFFFF) return b + 16 - __builtin_clz(~ws & 0xFFFFu);
            b -= 16;
        }
    #endif
        while (b > a && sage_ws1(p[b - 1])) b--;
        return b;
    }
    """
    Py_ssize_t sage_scan_char(int kind, const void* data, Py_ssize_t start, Py_ssize_t stop,
                              Py_UCS4 c, Py_ssize_t* out, Py_ssize_t cnt) noexcept nogil
    unsigned int sage_narrow4(const unsigned int* s, unsigned char* d, Py_ssize_t n) noexcept nogil
    unsigned int sage_narrow2(const Py_UCS2* s, unsigned char* d, Py_ssize_t n) noexcept nogil
    unsigned int sage_copy1(const unsigned char* s, unsigned char* d, Py_ssize_t n) noexcept nogil
    Py_ssize_t sage_lstrip1(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil
    Py_ssize_t sage_rstrip1(const unsigned char* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil


cdef extern from *:
    """
    #include <thread>
    #include <mutex>
    #include <condition_variable>
    #include <deque>
    #include <atomic>
    #include <utility>
    #include <vector>

    /* Hand-off of decided chunks from the splitter thread to the thread building the strings:
       batches of (chunks, joined pieces), FIFO. */
    template <class C, class P>
    struct SageBatch {
        std::vector<C> c; std::vector<P> p;
    };
    template <class C, class P>
    struct SageQueue {
        std::mutex m;
        std::condition_variable cv;
        std::deque<SageBatch<C, P> > q;
        bool done = false;
        std::atomic<bool> stopped{false};
        void push(std::vector<C>& c, std::vector<P>& p) {
            if (!stopped.load(std::memory_order_relaxed)) {
                std::lock_guard<std::mutex> g(m);
                q.emplace_back();
                q.back().c.swap(c);
                q.back().p.swap(p);
            }
            c.clear();
            p.clear();
            cv.notify_one();
        }
        void finish() {
            { std::lock_guard<std::mutex> g(m); done = true; }
            cv.notify_one();
        }
        void stop() { stopped.store(true); }
        bool is_stopped() { return stopped.load(std::memory_order_relaxed); }
        /* 1: a batch was moved into c, p; 0: none ready yet; -1: none left. */
        int take_locked(std::vector<C>& c, std::vector<P>& p) {
            if (!q.empty()) {
                c.swap(q.front().c);
                p.swap(q.front().p);
                q.pop_front();
                return 1;
            }
            return done ? -1 : 0;
        }
        int try_pop(std::vector<C>& c, std::vector<P>& p) {
            std::lock_guard<std::mutex> g(m);
            return take_locked(c, p);
        }
        int pop(std::vector<C>& c, std::vector<P>& p) {
            std::unique_lock<std::mutex> g(m);
            int r;
            while ((r = take_locked(c, p)) == 0) cv.wait(g);
            return r;
        }
    };

    /* Append a Piece / Chunk by writing its fields in place: building the struct on the stack
       and copying it (what Cython emits) reloads 16 bytes just stored as two 8-byte halves, a
       store-forwarding stall that was half of split_range's time. */
    template <class V>
    static inline void sage_push_piece(V& v, Py_ssize_t a, Py_ssize_t b) {
        v.emplace_back();
        v.back().start = a;
        v.back().end = b;
    }
    template <class V>
    static inline void sage_push_chunk(V& v, Py_ssize_t a, Py_ssize_t b, Py_ssize_t lo, Py_ssize_t hi, int sep) {
        v.emplace_back();
        v.back().start = a;
        v.back().end = b;
        v.back().plo = lo;
        v.back().phi = hi;
        v.back().sep = sep;
    }

    typedef void (*sage_thread_fn)(void*);
    static void* sage_thread_start(sage_thread_fn f, void* arg) {
        try { return (void*) new std::thread(f, arg); } catch (...) { return NULL; }
    }
    static void sage_thread_join(void* t) {
        std::thread* th = (std::thread*) t;
        th->join();
        delete th;
    }
    """
    cppclass SageQueue[C, P]:
        void push(vector[C]& c, vector[P]& p) noexcept nogil
        void finish() noexcept nogil
        void stop() noexcept nogil
        bint is_stopped() noexcept nogil
        int try_pop(vector[C]& c, vector[P]& p) noexcept nogil
        int pop(vector[C]& c, vector[P]& p) noexcept nogil
    ctypedef void (*sage_thread_fn)(void*) noexcept nogil
    void sage_push_piece[V](V& v, Py_ssize_t a, Py_ssize_t b) noexcept nogil
    void sage_push_chunk[V](V& v, Py_ssize_t a, Py_ssize_t b, Py_ssize_t lo, Py_ssize_t hi, int sep) noexcept nogil
    void* sage_thread_start(sage_thread_fn f, void* arg) noexcept nogil
    void sage_thread_join(void* t) noexcept nogil


import re as _re

DEFAULT_SEPARATORS = ("\n\n", "\n", " ", "")

# LangChain's separators for Markdown (RecursiveCharacterTextSplitter.from_language(
# Language.MARKDOWN), which sets is_separator_regex=True): headings, end of code blocks,
# horizontal rules, then paragraphs, lines, words, characters. A re.Pattern separator is a regex
# (a str one a literal), so ``chunk_text(text, n, k, MARKDOWN_SEPARATORS)`` gives the chunks of
# ``from_language(Language.MARKDOWN, chunk_size=n, chunk_overlap=k).split_text(text)``.
# Note: LangChain's MarkdownTextSplitter passes these strings *without* is_separator_regex, so
# there they are literals ("\n#{1,6} " never occurs in text); pass the plain strings
# (``[p.pattern if isinstance(p, re.Pattern) else p for p in MARKDOWN_SEPARATORS]``) to get that.
MARKDOWN_SEPARATORS = (
    _re.compile("\n#{1,6} "),
    "```\n",
    _re.compile("\n\\*\\*\\*+\n"),
    _re.compile("\n---+\n"),
    _re.compile("\n___+\n"),
    "\n\n",
    "\n",
    " ",
    "",
)

# keep_separator modes (LangChain: False, True/"start", "end")
cdef enum:
    KEEP_NONE = 0
    KEEP_START = 1
    KEEP_END = 2


cdef struct Piece:
    Py_ssize_t start
    Py_ssize_t end


cdef struct Chunk:
    # A chunk is text[start:end] when plo == -1; otherwise (keep_separator=False with runs of
    # separators between pieces) it is separators[sep].join(pieces[plo:phi]).strip().
    # plo == -2 marks the end of a document (batches of documents).
    Py_ssize_t start
    Py_ssize_t end
    Py_ssize_t plo
    Py_ssize_t phi
    int sep


# Positions of the indexed character are found ahead of the splitter, SCAN_SLAB code points at a
# time, and the chunks decided so far are materialised every FLUSH_CHUNKS chunks, so each part of
# the text is read from memory once and copied into its chunks while it is still in cache.
cdef Py_ssize_t SCAN_SLAB = 65536
cdef Py_ssize_t FLUSH_CHUNKS = 256

# Two threads (when the process may run on two CPUs and the text, or all texts of a batch
# together, are long enough to pay for a thread start): a splitter thread decides the chunks
# without the GIL and hands them over in batches of FLUSH_CHUNKS; the calling thread builds their
# strings meanwhile. More threads would have nothing to do: the splitting is sequential (each
# merge depends on the previous chunk).
cdef int THREADS = 1
cdef Py_ssize_t PARALLEL_MIN_CHARS = 262144
cdef Py_ssize_t UNBOUNDED = <Py_ssize_t> (<size_t> -1 >> 1)


# --- prepared separator tables ---------------------------------------------------------------
# Preparing the separators (validation, code points, regex atoms, the indexed character) is
# done once per distinct separators tuple and cached: per call it cost more than chunking a
# small file's first lines.

@cython.final
@cython.no_gc
cdef class _Seps:
    cdef int nseps
    cdef list joins                  # what LangChain joins pieces with (keep_separator=False)
    cdef vector[Py_UCS4] chars       # literal levels' code points, concatenated
    cdef vector[Py_ssize_t] off
    cdef vector[Py_ssize_t] mlen     # literal: code points matched; regex: 0
    cdef vector[Py_ssize_t] jlen     # len(joins[i])
    cdef vector[char] exact_join     # joins[i] is what the separator matches (literal levels)
    cdef vector[char] indexed        # literal made only of idx_char: searched on the index
    cdef vector[char] regex
    cdef vector[Py_ssize_t] alt_off  # regex level i: alternatives alt_off[i]..alt_off[i + 1]
    cdef vector[Py_ssize_t] first    # regex level: the one character every match starts with, or -1
    cdef vector[Py_ssize_t] atom_off # alternative a: atoms atom_off[a]..atom_off[a + 1]
    cdef vector[Py_UCS4] atom_char
    cdef vector[Py_ssize_t] atom_min
    cdef vector[Py_ssize_t] atom_max
    cdef Py_UCS4 idx_char


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_QUANTIFIER = _re.compile(r"\{(\d*)(,?)(\d*)\}")


cdef object _quantifier(str pat, Py_ssize_t i):
    """(min, max, next index) of a {m,n} quantifier at pat[i], or None where Python's re reads a
    literal "{"."""
    m = _QUANTIFIER.match(pat, i)
    if m is None or m.group(0) == "{}" or (not m.group(2) and m.group(3)):
        return None
    lo, comma, hi = m.group(1), m.group(2), m.group(3)
    mn = int(lo) if lo else 0
    mx = (int(hi) if hi else UNBOUNDED) if comma else mn
    return mn, mx, m.end()


cdef list _parse_regex(str pat):
    """The alternatives of a regex separator, each a list of (char, min, max) atoms, or raise.

    The subset LangChain's language separators use: literal and escaped characters, the greedy
    quantifiers ? * + {m} {m,} {,n} {m,n} on one character, and | at the top level. Matching
    these with backtracking gives exactly Python's re matches."""
    cdef list alts = [], atoms = []
    cdef Py_ssize_t i = 0, n = len(pat)
    unsupported = ValueError(f"unsupported regex separator {pat!r}: only characters, ? * + {{m,n}} and | are supported")
    while i < n:
        ch = pat[i]
        if ch == "|":
            alts.append(atoms)
            atoms = []
            i += 1
            continue
        if ch == "\\":
            if i + 1 >= n:
                raise unsupported
            ch = pat[i + 1]
            if ch in _ESCAPES:
                ch = _ESCAPES[ch]
            elif ch.isascii() and ch.isalnum():
                raise unsupported
            i += 2
        elif ch in ".[]()^$*+?":
            raise unsupported
        elif ch == "{" and _quantifier(pat, i) is not None:
            raise unsupported
        else:
            i += 1
        mn = mx = 1
        if i < n:
            q = pat[i]
            if q == "*":
                mn, mx, i = 0, UNBOUNDED, i + 1
            elif q == "+":
                mn, mx, i = 1, UNBOUNDED, i + 1
            elif q == "?":
                mn, mx, i = 0, 1, i + 1
            elif q == "{":
                quant = _quantifier(pat, i)
                if quant is not None:
                    mn, mx, i = quant
                    if mn > mx:
                        raise unsupported
            if i < n and (pat[i] in "*+?" or (pat[i] == "{" and _quantifier(pat, i) is not None)):
                raise unsupported     # lazy, possessive or repeated quantifiers
        atoms.append((ord(ch), mn, mx))
    alts.append(atoms)
    for atoms in alts:
        if sum(a[1] for a in atoms) == 0:
            raise ValueError(f"regex separator {pat!r} may match an empty string")
    return alts


cdef dict _SEPS_CACHE = {}
cdef _Seps _DEFAULT_TAB = None


cdef _Seps _prepare(object separators, bint regex):
    global _DEFAULT_TAB
    if separators is None and not regex:
        if _DEFAULT_TAB is None:
            _DEFAULT_TAB = _build_seps(DEFAULT_SEPARATORS, False)
        return _DEFAULT_TAB
    if separators is None or (isinstance(separators, (list, tuple)) and len(separators) == 0):
        separators = DEFAULT_SEPARATORS     # LangChain: `separators or [...]`
    if not isinstance(separators, (list, tuple)):
        raise ValueError("separators must be a list of str")
    key = (tuple(separators), regex)
    try:
        tab = _SEPS_CACHE.get(key)
    except TypeError:           # unhashable element: not a str, reported below
        key = None
        tab = None
    if tab is not None:
        return <_Seps> tab
    tab = _build_seps(key[0] if key is not None else tuple(separators), regex)
    if key is not None:
        if len(_SEPS_CACHE) >= 256:
            _SEPS_CACHE.clear()
        _SEPS_CACHE[key] = tab
    return <_Seps> tab


cdef _Seps _build_seps(tuple separators, bint regex):
    cdef list levels = []     # (join string, literal text or None, alternatives or None)
    for s in separators:
        if isinstance(s, _re.Pattern):
            if not isinstance(s.pattern, str) or (s.flags & ~_re.UNICODE):
                raise ValueError("separators must be a list of str (or str re.Pattern without flags)")
            pat, is_re = s.pattern, True
        elif isinstance(s, str):
            pat, is_re = s, regex
        else:
            raise ValueError("separators must be a list of str")
        if not is_re or pat == "":
            levels.append((pat, pat, None))
            continue
        alts = _parse_regex(pat)
        if len(alts) == 1 and all(a[1] == a[2] for a in alts[0]):
            levels.append((pat, "".join(chr(a[0]) * a[1] for a in alts[0]), None))
        else:
            levels.append((pat, None, alts))
    cdef _Seps tab = _Seps()
    tab.nseps = len(levels)
    tab.joins = [lv[0] for lv in levels]
    # The first literal made of one repeated character chooses the indexed character.
    idx_str = None
    tab.idx_char = 0
    for join, lit, alts in levels:
        if lit and lit == lit[0] * len(lit):
            idx_str = lit[0]
            tab.idx_char = ord(idx_str)
            break
    cdef Py_ssize_t total = 0
    cdef char flag
    for join, lit, alts in levels:
        tab.off.push_back(total)
        tab.jlen.push_back(len(join))
        tab.alt_off.push_back(<Py_ssize_t> tab.atom_off.size())
        if alts is None:
            tab.mlen.push_back(len(lit))
            for ch in lit:
                tab.chars.push_back(ord(ch))
            total += len(lit)
            flag = 1 if lit == join else 0
            tab.exact_join.push_back(flag)
            flag = 0
            if idx_str is not None and len(lit) > 0 and lit == idx_str * len(lit):
                flag = 1
            tab.indexed.push_back(flag)
            tab.regex.push_back(0)
            tab.first.push_back(-1)
            continue
        tab.mlen.push_back(0)
        tab.exact_join.push_back(0)
        tab.indexed.push_back(0)
        tab.regex.push_back(1)
        firsts = {atoms[0][0] if atoms[0][1] > 0 else -1 for atoms in alts}
        tab.first.push_back(firsts.pop() if len(firsts) == 1 else -1)
        for atoms in alts:
            tab.atom_off.push_back(<Py_ssize_t> tab.atom_char.size())
            for c, mn, mx in atoms:
                tab.atom_char.push_back(c)
                tab.atom_min.push_back(mn)
                tab.atom_max.push_back(mx)
    tab.alt_off.push_back(<Py_ssize_t> tab.atom_off.size())
    tab.atom_off.push_back(<Py_ssize_t> tab.atom_char.size())
    tab.chars.push_back(0)   # keeps chars[off] valid for empty separators
    return tab


@cython.final
@cython.no_gc
cdef class _Splitter:
    # --- the document being split (splitter side) ---
    cdef const void* data
    cdef int kind
    cdef Py_ssize_t n
    # --- all documents of the call ---
    cdef Py_ssize_t ndocs
    cdef vector[const void*] d_data
    cdef vector[int] d_kind
    cdef vector[Py_ssize_t] d_n
    cdef vector[char] d_ascii
    # --- parameters ---
    cdef Py_ssize_t chunk_size
    cdef Py_ssize_t overlap
    cdef int keep
    cdef int nseps
    cdef _Seps tab
    cdef const Py_UCS4* sep_chars
    cdef const Py_ssize_t* sep_off
    cdef const Py_ssize_t* sep_mlen
    cdef const Py_ssize_t* sep_jlen
    cdef const char* sep_indexed
    cdef const char* sep_regex
    cdef const char* sep_exact
    cdef Py_ssize_t mlen             # length of the last regex match (find_re)
    # --- splitting state ---
    cdef vector[Piece] pieces        # stack of pending "good splits", one segment per recursion level
    cdef vector[Piece] joined        # pieces of non-contiguous chunks (keep_separator=False only)
    cdef vector[Chunk] chunks        # decided, not yet materialised (or handed over)
    cdef SageQueue[Chunk, Piece] queue
    cdef bint threaded               # chunks go to queue (splitter thread) instead of flush()
    # Index of one character (the one the leading separators are made of, "\n" by default):
    # idx[0:idx_len] are all its positions below idx_limit, in order. A malloc'd buffer reused
    # across the documents of a call (never zero-filled: a zero-filled vector of n + 2 entries
    # was 11% of the time of chunking small files one call each).
    cdef Py_UCS4 idx_char
    cdef Py_ssize_t* idx
    cdef Py_ssize_t idx_cap
    cdef Py_ssize_t idx_len
    cdef Py_ssize_t idx_limit
    cdef Py_ssize_t hint_k           # maybe the index of the start of the next range split (or -1)
    # --- materialisation (under the GIL), document m_doc ---
    cdef list texts                  # None: one text (chunk_text), in one
    cdef list outs
    cdef list offs
    cdef str one
    cdef list out1                   # one text: its chunks (and offsets), no list of lists
    cdef list off1
    cdef Py_ssize_t m_doc
    cdef str m_text
    cdef const void* m_data
    cdef int m_kind
    cdef bint m_ascii
    cdef list m_out
    cdef list m_offsets
    cdef object error

    def __dealloc__(self):
        _give_idx(self.idx, self.idx_cap)

    cdef void start_doc(self, Py_ssize_t i) noexcept nogil:
        self.data = self.d_data[i]
        self.kind = self.d_kind[i]
        self.n = self.d_n[i]
        self.idx_len = 0
        self.idx_limit = 0
        self.hint_k = -1

    cdef void end_doc(self) noexcept nogil:
        self.push_chunk(0, 0, -2, -2, 0)

    cdef int load_doc(self, Py_ssize_t i) except -1:
        self.m_doc = i
        if i >= self.ndocs:
            return 0
        self.m_data = self.d_data[i]
        self.m_kind = self.d_kind[i]
        self.m_ascii = self.d_ascii[i]
        if self.texts is None:
            self.m_text = self.one
            self.m_out = self.out1
            self.m_offsets = self.off1
            return 0
        self.m_text = self.texts[i]
        self.m_out = self.outs[i]
        self.m_offsets = self.offs[i] if self.offs is not None else None
        return 0

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
        """First occurrence of literal separator si fully inside [start, end), or -1 (unindexed separators)."""
        cdef Py_ssize_t m = self.sep_mlen[si]
        cdef Py_ssize_t off = self.sep_off[si]
        cdef Py_ssize_t last = end - m      # last possible start position (inclusive)
        cdef Py_ssize_t pos = start
        cdef Py_ssize_t j
        cdef Py_UCS4 first = self.sep_chars[off]
        cdef bint ok
        cdef Py_ssize_t k
        if first == self.idx_char and first != 0:
            # Starts with the indexed character ("\nclass ", Markdown's literal "\n---+\n"):
            # walk its positions instead of a memchr per occurrence.
            k = self.idx_lower(start)
            while True:
                if k >= self.idx_len:
                    if self.idx_limit > last or self.idx_limit >= self.n:
                        return -1
                    self.extend()
                    continue
                pos = self.idx[k]
                if pos > last:
                    return -1
                ok = True
                for j in range(1, m):
                    if PyUnicode_READ(self.kind, self.data, pos + j) != self.sep_chars[off + j]:
                        ok = False
                        break
                if ok:
                    return pos
                k += 1
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

    # --- regex separators (the subset _parse_regex accepts) --------------------------------------
    cdef Py_ssize_t match_atoms(self, Py_ssize_t t, Py_ssize_t t1, Py_ssize_t p, Py_ssize_t e) noexcept nogil:
        """End of the match of atoms[t:t1] at p within [p, e) (greedy, backtracking), or -1."""
        cdef Py_UCS4 c
        cdef Py_ssize_t mn, mx, r = 0, end
        if t == t1:
            return p
        c = self.tab.atom_char[t]
        mn = self.tab.atom_min[t]
        mx = self.tab.atom_max[t]
        while r < mx and p + r < e and PyUnicode_READ(self.kind, self.data, p + r) == c:
            r += 1
        while r >= mn:
            end = self.match_atoms(t + 1, t1, p + r, e)
            if end >= 0:
                return end
            r -= 1
        return -1

    cdef Py_ssize_t find_re(self, int si, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
        """Leftmost match of regex separator si in [s, e) (re.search): its start, and its length
        in self.mlen; -1 if none. At one position the first matching alternative wins."""
        cdef Py_ssize_t a0 = self.tab.alt_off[si], a1 = self.tab.alt_off[si + 1]
        cdef Py_ssize_t fc = self.tab.first[si]
        cdef Py_ssize_t p = s, a, end, k
        cdef Py_ssize_t t0, t1
        if fc >= 0 and <Py_UCS4> fc == self.idx_char and self.idx_char != 0:
            # Every match starts with the indexed character (Markdown's "\n#{1,6} ", "\n---+\n"):
            # walk its positions, checking the second atom inline before backtracking.
            k = self.idx_lower(s)
            while True:
                if k >= self.idx_len:
                    if self.idx_limit >= e or self.idx_limit >= self.n:
                        return -1
                    self.extend()
                    continue
                p = self.idx[k]
                if p >= e:
                    return -1
                for a in range(a0, a1):
                    t0 = self.tab.atom_off[a]
                    t1 = self.tab.atom_off[a + 1]
                    if (t1 - t0 >= 2 and self.tab.atom_max[t0] == 1 and self.tab.atom_min[t0 + 1] > 0 and
                            (p + 1 >= e or PyUnicode_READ(self.kind, self.data, p + 1) != self.tab.atom_char[t0 + 1])):
                        continue
                    end = self.match_atoms(t0, t1, p, e)
                    if end > p:
                        self.mlen = end - p
                        return p
                k += 1
        while p < e:
            if fc >= 0:
                p = self.find_char(<Py_UCS4> fc, p, e)
                if p < 0:
                    return -1
            for a in range(a0, a1):
                end = self.match_atoms(self.tab.atom_off[a], self.tab.atom_off[a + 1], p, e)
                if end > p:
                    self.mlen = end - p
                    return p
            p += 1
        return -1

    # --- the character index -----------------------------------------------------------------
    cdef void extend(self) noexcept nogil:
        """Index the next slab of the text (idx_limit < n)."""
        cdef Py_ssize_t stop = self.idx_limit + SCAN_SLAB
        # A text of up to 4 slabs is indexed whole at once (it fits in cache anyway): idx_find's
        # inline loop then never has to extend.
        if self.n <= 4 * SCAN_SLAB:
            stop = self.n
        cdef Py_ssize_t need, cap
        cdef Py_ssize_t* grown
        if stop > self.n:
            stop = self.n
        need = self.idx_len + (stop - self.idx_limit) + 2
        if self.idx_cap < need:
            cap = 2 * self.idx_cap
            if cap < need:
                cap = need
            grown = <Py_ssize_t*> malloc(<size_t> cap * sizeof(Py_ssize_t))
            if grown == NULL:
                # Out of memory: index nothing more; searches of indexed separators stop here
                # (the caller's string building fails on the same condition soon after).
                self.idx_limit = self.n
                return
            if self.idx_len:
                memcpy(grown, self.idx, <size_t> self.idx_len * sizeof(Py_ssize_t))
            free(self.idx)
            self.idx = grown
            self.idx_cap = cap
        self.idx_len = sage_scan_char(self.kind, self.data, self.idx_limit, stop, self.idx_char,
                                      self.idx, self.idx_len)
        self.idx_limit = stop

    cdef Py_ssize_t idx_lower(self, Py_ssize_t s) noexcept nogil:
        """Index k of the first indexed position >= s (idx_len if none so far)."""
        cdef Py_ssize_t lo = self.hint_k, hi, mid
        # split_range leaves the index of the piece it recurses into (a binary search per
        # recursion was a third of split_range's time); checked, as any stale hint is
        if lo >= 0 and lo < self.idx_len and self.idx[lo] == s:
            return lo
        lo = 0
        while self.idx_limit <= s and self.idx_limit < self.n:
            self.extend()
        hi = self.idx_len
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.idx[mid] < s:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef inline Py_ssize_t idx_find(self, Py_ssize_t m, Py_ssize_t k, Py_ssize_t e) noexcept nogil:
        """From index k on, the index of the first run of m indexed characters that ends by e, or -1."""
        cdef const Py_ssize_t* idx
        cdef Py_ssize_t last, p
        if self.idx_limit < self.n:
            return self.idx_find_ext(m, k, e)
        # The whole text is indexed (every text under SCAN_SLAB code points): a tight inline
        # loop; a call per separator occurrence was most of idx_find's time.
        idx = self.idx
        last = self.idx_len - m + 1          # k < last: idx[k + m - 1] exists
        while k < last:
            p = idx[k]
            if p + m > e:
                return -1
            if idx[k + m - 1] == p + m - 1:
                return k
            k += 1
        return -1

    cdef Py_ssize_t idx_find_ext(self, Py_ssize_t m, Py_ssize_t k, Py_ssize_t e) noexcept nogil:
        """idx_find, indexing further slabs as needed."""
        cdef Py_ssize_t p
        while True:
            if k >= self.idx_len:
                if self.idx_limit >= e or self.idx_limit >= self.n:
                    return -1
                self.extend()
                continue
            p = self.idx[k]
            if p + m > e:
                return -1
            if m == 1:
                return k
            if k + m - 1 >= self.idx_len:
                if self.idx_limit >= self.n:
                    return -1
                if self.idx_limit < p + m:
                    self.extend()
                    continue
                k += 1
                continue
            # positions are distinct and sorted: m entries spanning m - 1 means a run
            if self.idx[k + m - 1] == p + m - 1:
                return k
            k += 1

    # --- LangChain's _split_text -----------------------------------------------------------
    cdef void split_range(self, Py_ssize_t s, Py_ssize_t e, int level) noexcept nogil:
        cdef int chosen = -1
        cdef int next_level = self.nseps
        cdef int i
        cdef bint indexed = False, regex = False
        cdef Py_ssize_t occ = -1, k = -1
        cdef Py_ssize_t m = 0, p, ps, nxt, base
        cdef Py_ssize_t kps = -1        # indexed separator: maybe the index of ps (hint_k)
        cdef const Py_ssize_t* idx
        cdef Py_ssize_t ilen, size
        for i in range(level, self.nseps):
            if self.sep_regex[i]:
                occ = self.find_re(i, s, e)
            elif self.sep_mlen[i] == 0:
                chosen = i
                break
            elif self.sep_indexed[i]:
                k = self.idx_find(self.sep_mlen[i], self.idx_lower(s), e)
                occ = self.idx[k] if k >= 0 else -1
            else:
                occ = self.find_sep(i, s, e)
            if occ >= 0:
                chosen = i
                next_level = i + 1
                indexed = self.sep_indexed[i]
                regex = self.sep_regex[i]
                break
        if chosen < 0:
            # No separator occurs: LangChain splits on separators[-1], which yields the whole range.
            chosen = self.nseps - 1
            occ = -1
        base = <Py_ssize_t> self.pieces.size()
        m = self.mlen if regex else self.sep_mlen[chosen]
        if occ < 0:
            if self.sep_mlen[chosen] == 0 and not self.sep_regex[chosen]:
                for p in range(s, e):
                    self.take_piece(p, p + 1, base, chosen, next_level)
            elif e > s:
                self.take_piece(s, e, base, chosen, next_level)
        elif indexed and self.keep == KEEP_START and self.idx_limit >= self.n:
            # The common case (default separators, "\n\n" and "\n" levels, texts indexed whole):
            # the same loop with the keep mode, regex and index extension branches hoisted and
            # the index in locals (nothing here changes it once it is whole).
            idx = self.idx
            ilen = self.idx_len
            size = self.chunk_size
            ps = s
            if m == 1:
                self.split_lines(s, e, k, chosen, next_level)
                return
            while True:
                occ = idx[k]
                if occ > ps:
                    if occ - ps < size:
                        sage_push_piece(self.pieces, ps, occ)
                    else:
                        self.hint_k = kps
                        self.take_piece(ps, occ, base, chosen, next_level)
                ps = occ
                kps = k
                if m == 1:
                    k += 1
                    if k >= ilen or idx[k] >= e:
                        break
                else:
                    k = self.idx_find(m, k + m, e)
                    if k < 0:
                        break
            if e > ps:
                self.hint_k = kps
                self.take_piece(ps, e, base, chosen, next_level)
        else:
            ps = s
            while occ >= 0:
                if indexed:
                    self.hint_k = kps
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
                if indexed:
                    # take_piece may have extended the index but never reorders it: k stays valid
                    kps = k if self.keep == KEEP_START else k + m
                    k = self.idx_find(m, k + m, e)
                    occ = self.idx[k] if k >= 0 else -1
                elif regex:
                    occ = self.find_re(chosen, nxt, e)
                    m = self.mlen
                else:
                    occ = self.find_sep(chosen, nxt, e)
            if e > ps:
                if indexed:
                    self.hint_k = kps
                self.take_piece(ps, e, base, chosen, next_level)
        if <Py_ssize_t> self.pieces.size() > base:
            self.merge(base, chosen)

    cdef void split_lines(self, Py_ssize_t s, Py_ssize_t e, Py_ssize_t k, int chosen,
                          int next_level) noexcept nogil:
        """split_range's pieces and merge in one pass, for a one-character indexed separator
        ("\n" by default) with keep_separator true and the text indexed whole (k: the index of
        its first occurrence in [s, e)). The pieces of one level are then contiguous and each
        one's end is the next index entry, so the merge window is two positions (its start ws,
        and lo_k, the index entry that ends its first piece) and nothing goes through the pieces
        vector: same chunks, in the same order, as take_piece + merge (a line costs ~3x less)."""
        cdef const Py_ssize_t* idx = self.idx
        cdef Py_ssize_t ilen = self.idx_len
        cdef Py_ssize_t size = self.chunk_size, overlap = self.overlap
        cdef Py_ssize_t ps = s, pe, occ, length, total
        cdef Py_ssize_t kps = -1        # the index of ps (-1: s, not an occurrence)
        cdef Py_ssize_t ws = -1         # the merge window's start (-1: empty); it ends at ps
        cdef Py_ssize_t lo_k = 0        # the index entry where its first piece ends
        cdef bint last = False
        while True:
            # the next piece, [ps, pe): up to the next occurrence, or to e after the last one
            if k >= 0:
                occ = idx[k]
                pe = occ
            else:
                pe = e
                last = True
            if pe > ps:
                length = pe - ps
                if length >= size:
                    # take_piece: merge what is pending, then split the piece finer
                    if ws >= 0:
                        self.emit_range(ws, ps, chosen)
                        ws = -1
                    self.hint_k = kps
                    if next_level >= self.nseps:
                        self.push_chunk(ps, pe, -1, -1, 0)
                    else:
                        self.split_range(ps, pe, next_level)
                elif ws < 0:
                    ws = ps
                    lo_k = k if k >= 0 else kps + 1
                else:
                    total = ps - ws
                    if total + length > size:
                        self.emit_range(ws, ps, chosen)
                        while total > overlap or (total + length > size and total > 0):
                            ws = idx[lo_k]
                            lo_k += 1
                            total = ps - ws
            if last:
                break
            ps = pe
            kps = k
            k += 1
            if k >= ilen or idx[k] >= e:
                k = -1
        if ws >= 0:
            self.emit_range(ws, e, chosen)

    cdef inline void take_piece(self, Py_ssize_t ps, Py_ssize_t pe, Py_ssize_t base, int chosen,
                                int next_level) noexcept nogil:
        if pe - ps < self.chunk_size:
            sage_push_piece(self.pieces, ps, pe)
            return
        if <Py_ssize_t> self.pieces.size() > base:
            self.merge(base, chosen)
        if next_level >= self.nseps:
            # Too long and no finer separator left: LangChain emits it as is (not stripped).
            self.push_chunk(ps, pe, -1, -1, 0)
        else:
            self.split_range(ps, pe, next_level)

    # --- LangChain's _merge_splits on pieces[base:] -----------------------------------------
    cdef void merge(self, Py_ssize_t base, int chosen) noexcept nogil:
        cdef Py_ssize_t n = <Py_ssize_t> self.pieces.size()
        cdef Py_ssize_t ms = 0 if self.keep != KEEP_NONE else self.sep_jlen[chosen]
        cdef Py_ssize_t lo = base
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t i, length
        # locals: emit only appends to chunks/joined, never to pieces, so pc stays valid
        cdef const Piece* pc = self.pieces.data()
        cdef Py_ssize_t size = self.chunk_size, overlap = self.overlap
        if ms == 0:
            # keep_separator true (the default): the same loop without the separator lengths
            for i in range(base, n):
                length = pc[i].end - pc[i].start
                if total + length > size and i > lo:
                    self.emit(lo, i, chosen, 0)
                    while total > overlap or (total + length > size and total > 0):
                        total -= pc[lo].end - pc[lo].start
                        lo += 1
                total += length
            if n > lo:
                self.emit(lo, n, chosen, 0)
            self.pieces.resize(base)
            return
        for i in range(base, n):
            length = pc[i].end - pc[i].start
            if total + length + (ms if i > lo else 0) > size:
                if i > lo:
                    self.emit(lo, i, chosen, ms)
                    while total > overlap or (
                        total + length + (ms if i > lo else 0) > size and total > 0
                    ):
                        total -= (pc[lo].end - pc[lo].start) + (ms if i - lo > 1 else 0)
                        lo += 1
            total += length + (ms if i + 1 - lo > 1 else 0)
        if n > lo:
            self.emit(lo, n, chosen, ms)
        self.pieces.resize(base)

    cdef void emit(self, Py_ssize_t lo, Py_ssize_t hi, int chosen, Py_ssize_t ms) noexcept nogil:
        """_join_docs: join pieces[lo:hi], strip whitespace, drop if empty."""
        cdef Py_ssize_t j, plo
        cdef bint contiguous = True
        if ms > 0 and hi - lo > 1:
            if not self.sep_exact[chosen]:
                # the join string (a regex's pattern) is not the text between the pieces
                contiguous = False
            else:
                for j in range(lo, hi - 1):
                    if self.pieces[j + 1].start - self.pieces[j].end != ms:
                        contiguous = False
                        break
        if not contiguous:
            plo = <Py_ssize_t> self.joined.size()
            for j in range(lo, hi):
                self.joined.push_back(self.pieces[j])
            self.push_chunk(-1, -1, plo, <Py_ssize_t> self.joined.size(), chosen)
            return
        self.emit_range(self.pieces[lo].start, self.pieces[hi - 1].end, chosen)

    cdef void emit_range(self, Py_ssize_t a, Py_ssize_t b, int chosen) noexcept nogil:
        """_join_docs of contiguous pieces: text[a:b] stripped, dropped if empty."""
        cdef int kind
        cdef const void* data
        cdef const unsigned char* p1
        # kind and data in locals: Py_UNICODE_ISSPACE may call out (non-ASCII), which made the
        # compiler reload them from self at every character
        kind = self.kind
        data = self.data
        if kind == 1:
            p1 = <const unsigned char*> data
            a = sage_lstrip1(p1, a, b)
            b = sage_rstrip1(p1, a, b)
        else:
            while a < b and Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, a)):
                a += 1
            while b > a and Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, b - 1)):
                b -= 1
        if a < b:
            self.push_chunk(a, b, -1, -1, chosen)

    # No Python local may live in these two nogil functions: Cython would take the GIL at every
    # exit to release it (once per chunk, and on the splitter thread a GIL state each time).
    cdef inline void push_chunk(self, Py_ssize_t start, Py_ssize_t end, Py_ssize_t plo, Py_ssize_t phi,
                                int sep) noexcept nogil:
        sage_push_chunk(self.chunks, start, end, plo, phi, sep)
        if <Py_ssize_t> self.chunks.size() >= FLUSH_CHUNKS:
            self.hand_over()

    cdef void hand_over(self) noexcept nogil:
        if self.threaded:
            self.queue.push(self.chunks, self.joined)
        elif self.error is None:
            with gil:
                self.flush_or_keep_error()

    cdef void flush_or_keep_error(self) noexcept:
        try:
            self.flush()
        except BaseException as exc:
            self.error = exc

    # --- materialisation (GIL held) -----------------------------------------------------------
    cdef int consume(self) except -1:
        """Build the strings of the batches the splitter thread hands over, until it is done."""
        cdef vector[Chunk] chunks
        cdef vector[Piece] joined
        cdef int r
        while True:
            r = self.queue.try_pop(chunks, joined)
            if r == 0:
                with nogil:
                    r = self.queue.pop(chunks, joined)
            if r < 0:
                return 0
            self.materialise(chunks, joined)

    cdef int flush(self) except -1:
        self.materialise(self.chunks, self.joined)
        self.chunks.clear()
        self.joined.clear()
        return 0

    cdef int materialise(self, vector[Chunk]& chunks, vector[Piece]& joined_pieces) except -1:
        cdef Chunk c
        cdef Py_ssize_t j, pos, lead, ci, plen
        cdef str joined, stripped, sep
        cdef list out = self.m_out
        cdef list offsets = self.m_offsets
        cdef Py_ssize_t nc = <Py_ssize_t> chunks.size(), nfill = 0
        cdef object piece
        cdef bint ascii1
        cdef const unsigned char* data1
        if out is None:
            # One text (chunk_text), first batch: when every chunk of the batch is a range of
            # the text (always with the default keep_separator and literal separators), the list
            # is made at its size and filled in place; appending grew it ~7 times per file.
            for ci in range(nc):
                if chunks[ci].plo == -1:
                    nfill += 1
                elif chunks[ci].plo != -2:
                    nfill = -1
                    break
            if nfill < 0:
                out = []
                self.out1 = self.m_out = out
            else:
                out = PyList_New(nfill)
                self.out1 = self.m_out = out
                ascii1 = self.m_kind == 1 and self.m_ascii
                data1 = <const unsigned char*> self.m_data
                j = 0
                for ci in range(nc):
                    if chunks[ci].plo == -1:
                        # a failure leaves NULL items, which list_dealloc skips; the list is
                        # never returned then
                        if ascii1:
                            piece = PyUnicode_New(chunks[ci].end - chunks[ci].start, 127)
                            memcpy(PyUnicode_DATA(piece), data1 + chunks[ci].start,
                                   <size_t> (chunks[ci].end - chunks[ci].start))
                        else:
                            piece = _substring(self.m_kind, self.m_data, self.m_ascii, chunks[ci].start, chunks[ci].end)
                        Py_INCREF(piece)
                        PyList_SET_ITEM(out, j, piece)
                        j += 1
                        if offsets is not None:
                            offsets.append(chunks[ci].start)
                    else:
                        self.load_doc(self.m_doc + 1)   # the end of the text
                return 0
        for ci in range(nc):
            c = chunks[ci]
            if c.plo == -1:
                out.append(_substring(self.m_kind, self.m_data, self.m_ascii, c.start, c.end))
                if offsets is not None:
                    offsets.append(c.start)
                continue
            if c.plo == -2:
                # end of a document: the next chunks are the next one's
                self.load_doc(self.m_doc + 1)
                out = self.m_out
                offsets = self.m_offsets
                continue
            # keep_separator=False and a run of separators was dropped between pieces (or the
            # separator is a regex): build LangChain's join.
            sep = self.tab.joins[c.sep]
            parts = [PyUnicode_Substring(self.m_text, joined_pieces[j].start, joined_pieces[j].end) for j in range(c.plo, c.phi)]
            joined = sep.join(parts)
            stripped = joined.strip()
            if not stripped:
                continue
            out.append(stripped)
            if offsets is not None:
                # Where the chunk's first character comes from in the text.
                lead = len(joined) - len(joined.lstrip())
                pos = joined_pieces[c.plo].start
                for j in range(c.plo, c.phi):
                    plen = joined_pieces[j].end - joined_pieces[j].start
                    if lead < plen:
                        pos = joined_pieces[j].start + lead
                        break
                    lead -= plen
                    if j + 1 < c.phi and lead < len(sep):
                        pos = joined_pieces[j].end + lead
                        break
                    lead -= len(sep)
                offsets.append(pos)
        return 0


cdef int _keep_mode(object keep_separator) except -1:
    if keep_separator is True or keep_separator == "start":
        return KEEP_START
    if keep_separator == "end":
        return KEEP_END
    if keep_separator is False:
        return KEEP_NONE
    raise ValueError(f"keep_separator must be True, False, 'start' or 'end', got {keep_separator!r}")


cdef int _check_sizes(object chunk_size, object chunk_overlap) except -1:
    if type(chunk_size) is not int and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)):
        raise ValueError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if type(chunk_overlap) is not int and (isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int)):
        raise ValueError(f"chunk_overlap must be an int, got {type(chunk_overlap).__name__}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    if chunk_overlap < 0:
        raise ValueError(f"chunk_overlap must be >= 0, got {chunk_overlap}")
    if chunk_overlap >= chunk_size:
        raise ValueError(f"chunk_overlap must be < chunk_size, got overlap {chunk_overlap} >= size {chunk_size}")
    return 0


# One index buffer is kept between calls (taken and given back under the GIL): a fresh one per
# call of more than 128 KiB came from mmap, and its page faults cost more than the scan.
cdef Py_ssize_t* _IDX_SPARE = NULL
cdef Py_ssize_t _IDX_SPARE_CAP = 0
cdef Py_ssize_t IDX_KEEP_MAX = 1 << 20      # entries (8 MiB of address space, mostly untouched)


cdef inline void _take_idx(_Splitter sp):
    global _IDX_SPARE, _IDX_SPARE_CAP
    sp.idx = _IDX_SPARE
    sp.idx_cap = _IDX_SPARE_CAP
    _IDX_SPARE = NULL
    _IDX_SPARE_CAP = 0


cdef inline void _give_idx(Py_ssize_t* idx, Py_ssize_t cap):
    global _IDX_SPARE, _IDX_SPARE_CAP
    if idx == NULL:
        return
    if cap > IDX_KEEP_MAX or cap <= _IDX_SPARE_CAP:
        free(idx)
        return
    free(_IDX_SPARE)
    _IDX_SPARE = idx
    _IDX_SPARE_CAP = cap


# One splitter is kept between single-text calls (taken and given back under the GIL): its
# vectors keep their capacity, and no queue (a std::deque allocates) is built per call.
cdef _Splitter _SPARE_SPLITTER = None


cdef _Splitter _take_splitter():
    global _SPARE_SPLITTER
    cdef _Splitter sp = _SPARE_SPLITTER
    if sp is not None:
        _SPARE_SPLITTER = None
        return sp
    sp = _Splitter()
    _take_idx(sp)
    return sp


cdef inline void _give_splitter(_Splitter sp):
    """Keep sp for the next call (it ran on the calling thread and finished)."""
    global _SPARE_SPLITTER
    if sp.threaded:
        return
    sp.texts = None
    sp.outs = None
    sp.offs = None
    sp.one = None
    sp.out1 = None
    sp.off1 = None
    sp.m_text = None
    sp.m_out = None
    sp.m_offsets = None
    sp.tab = None
    sp.error = None
    sp.pieces.clear()
    sp.joined.clear()
    sp.chunks.clear()
    sp.d_data.clear()
    sp.d_kind.clear()
    sp.d_n.clear()
    sp.d_ascii.clear()
    _SPARE_SPLITTER = sp


cdef _Splitter _run(list texts, object chunk_size, object chunk_overlap, object separators,
                    object keep_separator, bint is_regex, bint with_offsets, object one=None):
    """Chunk every text of texts (str, checked here) into sp.outs (and offsets into sp.offs), or
    with texts None the one text into sp.out1 (sp.off1): no temporary lists, which the cyclic GC
    counts, for a single text."""
    cdef object text
    if texts is None:
        if not isinstance(one, str):
            raise ValueError(f"text must be a str, got {type(one).__name__}")
    else:
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"text must be a str, got {type(text).__name__}")
    _check_sizes(chunk_size, chunk_overlap)
    cdef _Seps tab = _prepare(separators, is_regex)
    cdef int keep = _keep_mode(keep_separator)

    cdef _Splitter sp
    cdef Py_ssize_t nd, i, total = 0
    if texts is None:
        sp = _take_splitter()
        nd = 1
        sp.one = one
        sp.out1 = None      # made by the first materialise (at its size)
        sp.off1 = [] if with_offsets else None
    else:
        sp = _Splitter()
        _take_idx(sp)
        nd = len(texts)
        sp.texts = texts
        sp.outs = [[] for _ in range(nd)]
        sp.offs = [[] for _ in range(nd)] if with_offsets else None
        sp.d_data.reserve(nd)
        sp.d_kind.reserve(nd)
        sp.d_n.reserve(nd)
        sp.d_ascii.reserve(nd)
    sp.ndocs = nd
    for i in range(nd):
        text = one if texts is None else texts[i]
        PyUnicode_READY(text)
        sp.d_data.push_back(PyUnicode_DATA(text))
        sp.d_kind.push_back(PyUnicode_KIND(text))
        sp.d_n.push_back(PyUnicode_GET_LENGTH(text))
        sp.d_ascii.push_back(PyUnicode_IS_ASCII(text))
        total += PyUnicode_GET_LENGTH(text)
    sp.error = None
    sp.chunk_size = chunk_size
    sp.overlap = chunk_overlap
    sp.keep = keep
    sp.tab = tab
    sp.nseps = tab.nseps
    sp.sep_chars = tab.chars.data()
    sp.sep_off = tab.off.data()
    sp.sep_mlen = tab.mlen.data()
    sp.sep_jlen = tab.jlen.data()
    sp.sep_indexed = tab.indexed.data()
    sp.sep_regex = tab.regex.data()
    sp.sep_exact = tab.exact_join.data()
    sp.idx_char = tab.idx_char
    sp.load_doc(0)
    if nd == 0:
        return sp
    cdef void* thread = NULL
    cdef vector[Chunk] dropped          # the splitter thread still owns sp.chunks, sp.joined
    cdef vector[Piece] dropped_pieces
    if THREADS > 1 and total >= PARALLEL_MIN_CHARS:
        sp.threaded = True
        thread = sage_thread_start(<sage_thread_fn> _produce, <void*> sp)
        if thread != NULL:
            try:
                sp.consume()
            finally:
                # On an error (MemoryError, KeyboardInterrupt) the splitter thread drops the rest.
                sp.queue.stop()
                with nogil:
                    while sp.queue.pop(dropped, dropped_pieces) > 0:
                        pass
                    sage_thread_join(thread)
            return sp
        sp.threaded = False
    with nogil:
        for i in range(nd):
            sp.start_doc(i)
            sp.split_range(0, sp.n, 0)
            sp.end_doc()
    if sp.error is not None:
        raise sp.error
    sp.flush()
    return sp


cdef void _produce(_Splitter sp) noexcept nogil:
    """The splitter thread: decide every chunk of every document, hand the batches over, then
    say so."""
    cdef Py_ssize_t i
    for i in range(sp.ndocs):
        if sp.queue.is_stopped():
            break
        sp.start_doc(i)
        sp.split_range(0, sp.n, 0)
        sp.end_doc()
    if sp.chunks.size() > 0:
        sp.queue.push(sp.chunks, sp.joined)
    sp.queue.finish()


cdef object _substring(int kind, const void* data, bint ascii, Py_ssize_t a, Py_ssize_t b):
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
        if ascii:
            res = PyUnicode_New(n, 127)
            memcpy(PyUnicode_DATA(res), s1, n)
            return res
    # Most chunks are ASCII: copy (narrowing) and OR-reduce in one pass into an ASCII string,
    # and start over with the right kind only when the OR says otherwise.
    res = PyUnicode_New(n, 127)
    d1 = <unsigned char*> PyUnicode_DATA(res)
    if kind == 4:
        mx = sage_narrow4((<const unsigned int*> data) + a, d1, n)
    elif kind == 2:
        mx = sage_narrow2((<const Py_UCS2*> data) + a, d1, n)
    else:
        mx = sage_copy1((<const unsigned char*> data) + a, d1, n)
    if mx < 128:
        return res
    res = None
    if kind == 1:
        res = PyUnicode_New(n, 255)
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




def _set_tuning(Py_ssize_t scan_slab=65536, Py_ssize_t flush_chunks=256):
    """Test/benchmark knob: index scan_slab code points at a time, materialise every flush_chunks
    decided chunks. Results never depend on these; tests set them small to exercise the seams."""
    global SCAN_SLAB, FLUSH_CHUNKS
    SCAN_SLAB = max(1, scan_slab)
    FLUSH_CHUNKS = max(1, flush_chunks)


def _set_threads(threads=None, Py_ssize_t min_chars=262144):
    """Test/benchmark knob: 1 runs everything on the calling thread, 2 (the default when the
    process may use two CPUs) decides the chunks on a second thread for texts (or batches of
    texts) of at least min_chars code points. None restores the default. Results never depend
    on these."""
    global THREADS, PARALLEL_MIN_CHARS
    THREADS = _default_threads() if threads is None else max(1, min(2, int(threads)))
    PARALLEL_MIN_CHARS = max(0, min_chars)


def _default_threads():
    import os
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 2 if cpus >= 2 else 1


THREADS = _default_threads()


def chunk_text(text, chunk_size, chunk_overlap, separators=None, keep_separator=True, is_separator_regex=False):
    """chunk_text(text: str, chunk_size: int, chunk_overlap: int, separators: Sequence[str | re.Pattern[str]] | None = None, keep_separator: bool | str = True, is_separator_regex: bool = False) -> list[str]

    The chunks of ``RecursiveCharacterTextSplitter(chunk_size=..., chunk_overlap=...,
    separators=..., keep_separator=..., is_separator_regex=...).split_text(text)`` (length =
    ``len``, whitespace stripped). A ``re.Pattern`` separator is a regex, a str one a literal
    unless is_separator_regex; regexes are limited to characters, ``? * + {m,n}`` and ``|``
    (``MARKDOWN_SEPARATORS`` gives LangChain's Markdown splitting). Raises ValueError on bad
    arguments (including overlap >= size and unsupported regexes).
    """
    cdef _Splitter sp = _run(None, chunk_size, chunk_overlap, separators, keep_separator, is_separator_regex, False, text)
    out = sp.out1
    _give_splitter(sp)
    return out


def chunk_text_with_offsets(text, chunk_size, chunk_overlap, separators=None, keep_separator=True, is_separator_regex=False):
    """chunk_text_with_offsets(text: str, chunk_size: int, chunk_overlap: int, separators: Sequence[str | re.Pattern[str]] | None = None, keep_separator: bool | str = True, is_separator_regex: bool = False) -> tuple[list[str], list[int]]

    Like chunk_text, plus the start offset of each chunk in ``text``. With keep_separator true
    (the default) ``text[off:off + len(chunk)] == chunk``; with keep_separator=False a chunk may
    join pieces across a run of separators and the offset is where its first character is (with
    a regex separator, whose pattern LangChain inserts between pieces, where the first piece is).
    """
    cdef _Splitter sp = _run(None, chunk_size, chunk_overlap, separators, keep_separator, is_separator_regex, True, text)
    out, offsets = sp.out1, sp.off1
    _give_splitter(sp)
    return out, offsets


cdef list _as_text_list(object texts):
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"texts must be a list of str, got {type(texts).__name__}")
    return texts if type(texts) is list else list(texts)


def chunk_texts(texts, chunk_size, chunk_overlap, separators=None, keep_separator=True, is_separator_regex=False):
    """chunk_texts(texts: Iterable[str], chunk_size: int, chunk_overlap: int, separators: Sequence[str | re.Pattern[str]] | None = None, keep_separator: bool | str = True, is_separator_regex: bool = False) -> list[list[str]]

    ``[chunk_text(t, ...) for t in texts]`` in one call: the arguments are checked and the
    separators prepared once, and where the texts together are long enough the splitter thread
    decides the chunks of the next documents while the calling thread builds the strings of the
    previous ones. Raises the ValueErrors of chunk_text (a text that is not a str included)
    before chunking anything.
    """
    return _run(_as_text_list(texts), chunk_size, chunk_overlap, separators, keep_separator, is_separator_regex, False).outs


def chunk_texts_with_offsets(texts, chunk_size, chunk_overlap, separators=None, keep_separator=True, is_separator_regex=False):
    """chunk_texts_with_offsets(texts: Iterable[str], chunk_size: int, chunk_overlap: int, separators: Sequence[str | re.Pattern[str]] | None = None, keep_separator: bool | str = True, is_separator_regex: bool = False) -> tuple[list[list[str]], list[list[int]]]

    chunk_texts plus, for each text, the offsets chunk_text_with_offsets gives.
    """
    cdef _Splitter sp = _run(_as_text_list(texts), chunk_size, chunk_overlap, separators, keep_separator, is_separator_regex, True)
    return sp.outs, sp.offs

