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
    static int sage_avx2 = -1;
    __attribute__((target("avx2")))
    static Py_ssize_t sage_scan4_avx2(const uint32_t* p, Py_ssize_t i, Py_ssize_t stop, uint32_t c,
                                      Py_ssize_t* out, Py_ssize_t cnt) {
        const __m256i v = _mm256_set1_epi32((int)c);
        for (; i + 32 <= stop; i += 32) {
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
    __attribute__((target("avx2")))
    static Py_ssize_t sage_scan1_avx2(const uint8_t* p, Py_ssize_t i, Py_ssize_t stop, uint32_t c,
                                      Py_ssize_t* out, Py_ssize_t cnt) {
        const __m256i v = _mm256_set1_epi8((char)c);
        for (; i + 32 <= stop; i += 32) {
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
        if (sage_avx2 < 0) { __builtin_cpu_init(); sage_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0; }
        if (sage_avx2 && kind == 4)
            return sage_scan4_avx2((const uint32_t*)data, start, stop, c, out, cnt);
        if (sage_avx2 && kind == 1)
            return c > 0xFF ? cnt : sage_scan1_avx2((const uint8_t*)data, start, stop, c, out, cnt);
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
    """
    Py_ssize_t sage_scan_char(int kind, const void* data, Py_ssize_t start, Py_ssize_t stop,
                              Py_UCS4 c, Py_ssize_t* out, Py_ssize_t cnt) noexcept nogil
    unsigned int sage_narrow4(const unsigned int* s, unsigned char* d, Py_ssize_t n) noexcept nogil
    unsigned int sage_narrow2(const Py_UCS2* s, unsigned char* d, Py_ssize_t n) noexcept nogil
    unsigned int sage_copy1(const unsigned char* s, unsigned char* d, Py_ssize_t n) noexcept nogil


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
        int try_pop(vector[C]& c, vector[P]& p) noexcept nogil
        int pop(vector[C]& c, vector[P]& p) noexcept nogil
    ctypedef void (*sage_thread_fn)(void*) noexcept nogil
    void* sage_thread_start(sage_thread_fn f, void* arg) noexcept nogil
    void sage_thread_join(void* t) noexcept nogil


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


# Positions of the indexed character are found ahead of the splitter, SCAN_SLAB code points at a
# time, and the chunks decided so far are materialised every FLUSH_CHUNKS chunks, so each part of
# the text is read from memory once and copied into its chunks while it is still in cache.
cdef Py_ssize_t SCAN_SLAB = 65536
cdef Py_ssize_t FLUSH_CHUNKS = 256

# Two threads (when the process may run on two CPUs and the text is long enough to pay for a
# thread start): a splitter thread decides the chunks without the GIL and hands them over in
# batches of FLUSH_CHUNKS; the calling thread builds their strings meanwhile. More threads would
# have nothing to do: the splitting is sequential (each merge depends on the previous chunk).
cdef int THREADS = 1
cdef Py_ssize_t PARALLEL_MIN_CHARS = 262144


cdef class _Splitter:
    cdef const void* data
    cdef int kind
    cdef Py_ssize_t n
    cdef Py_ssize_t chunk_size
    cdef Py_ssize_t overlap
    cdef int keep
    cdef int nseps
    cdef vector[Py_UCS4] sep_chars   # all separators, concatenated
    cdef vector[Py_ssize_t] sep_off
    cdef vector[Py_ssize_t] sep_len
    cdef vector[char] sep_indexed    # separator made only of idx_char: searched on the index
    cdef vector[Piece] pieces        # stack of pending "good splits", one segment per recursion level
    cdef vector[Piece] joined        # pieces of non-contiguous chunks (keep_separator=False only)
    cdef vector[Chunk] chunks        # decided, not yet materialised (or handed over)
    cdef SageQueue[Chunk, Piece] queue
    cdef bint threaded               # chunks go to queue (splitter thread) instead of flush()
    # Index of one character (the one the leading separators are made of, "\n" by default):
    # idx[0:idx_len] are all its positions below idx_limit, in order.
    cdef Py_UCS4 idx_char
    cdef vector[Py_ssize_t] idx
    cdef Py_ssize_t idx_len
    cdef Py_ssize_t idx_limit
    # Materialisation (under the GIL)
    cdef str text
    cdef list seps
    cdef bint ascii
    cdef list out
    cdef list offsets
    cdef object error

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
        """First occurrence of separator si fully inside [start, end), or -1 (unindexed separators)."""
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

    # --- the character index -----------------------------------------------------------------
    cdef void extend(self) noexcept nogil:
        """Index the next slab of the text (idx_limit < n)."""
        cdef Py_ssize_t stop = self.idx_limit + SCAN_SLAB
        if stop > self.n:
            stop = self.n
        if <Py_ssize_t> self.idx.size() < self.idx_len + (stop - self.idx_limit) + 2:
            self.idx.resize(2 * (self.idx_len + (stop - self.idx_limit)) + 2)
        self.idx_len = sage_scan_char(self.kind, self.data, self.idx_limit, stop, self.idx_char,
                                      self.idx.data(), self.idx_len)
        self.idx_limit = stop

    cdef Py_ssize_t idx_lower(self, Py_ssize_t s) noexcept nogil:
        """Index k of the first indexed position >= s (idx_len if none so far)."""
        cdef Py_ssize_t lo = 0, hi, mid
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

    cdef Py_ssize_t idx_find(self, Py_ssize_t m, Py_ssize_t k, Py_ssize_t e) noexcept nogil:
        """From index k on, the index of the first run of m indexed characters that ends by e, or -1."""
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
        cdef bint indexed = False
        cdef Py_ssize_t occ = -1, k = -1
        cdef Py_ssize_t m, p, ps, nxt, base
        for i in range(level, self.nseps):
            if self.sep_len[i] == 0:
                chosen = i
                break
            if self.sep_indexed[i]:
                k = self.idx_find(self.sep_len[i], self.idx_lower(s), e)
                occ = self.idx[k] if k >= 0 else -1
            else:
                occ = self.find_sep(i, s, e)
            if occ >= 0:
                chosen = i
                next_level = i + 1
                indexed = self.sep_indexed[i]
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
                if indexed:
                    # take_piece may have extended the index but never reorders it: k stays valid
                    k = self.idx_find(m, k + m, e)
                    occ = self.idx[k] if k >= 0 else -1
                else:
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
            self.push_chunk(raw)
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
            self.push_chunk(c)
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
            self.push_chunk(c)

    # No Python local may live in these two nogil functions: Cython would take the GIL at every
    # exit to release it (once per chunk, and on the splitter thread a GIL state each time).
    cdef inline void push_chunk(self, Chunk c) noexcept nogil:
        self.chunks.push_back(c)
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
        cdef list out = self.out
        cdef list offsets = self.offsets
        cdef str text = self.text
        for ci in range(<Py_ssize_t> chunks.size()):
            c = chunks[ci]
            if c.plo < 0:
                out.append(_substring(self.kind, self.data, self.ascii, c.start, c.end))
                if offsets is not None:
                    offsets.append(c.start)
                continue
            # keep_separator=False and a run of separators was dropped between pieces: build the join.
            sep = self.seps[c.sep]
            parts = [PyUnicode_Substring(text, joined_pieces[j].start, joined_pieces[j].end) for j in range(c.plo, c.phi)]
            joined = sep.join(parts)
            stripped = joined.strip()
            if not stripped:
                continue
            out.append(stripped)
            if offsets is not None:
                # Where the chunk's first character comes from in `text`.
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


cdef list _run(object text, object chunk_size, object chunk_overlap, object separators,
               object keep_separator, list offsets):
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
    sp.text = text
    sp.seps = list(separators)
    sp.kind = PyUnicode_KIND(text)
    sp.data = PyUnicode_DATA(text)
    sp.ascii = PyUnicode_IS_ASCII(text)
    sp.n = PyUnicode_GET_LENGTH(text)
    sp.out = []
    sp.offsets = offsets
    sp.error = None
    sp.chunk_size = chunk_size
    sp.overlap = chunk_overlap
    sp.keep = _keep_mode(keep_separator)
    sp.nseps = len(separators)
    cdef str sep
    cdef Py_ssize_t total = 0
    cdef bint have_idx = False
    cdef char flag
    for sep in separators:
        sp.sep_off.push_back(total)
        sp.sep_len.push_back(len(sep))
        for ch in sep:
            sp.sep_chars.push_back(ord(ch))
        total += len(sep)
        # The first separator made of one repeated character chooses the indexed character.
        if sep and sep == sep[0] * len(sep) and not have_idx:
            sp.idx_char = ord(sep[0])
            have_idx = True
        flag = 1 if have_idx and len(sep) > 0 and sep == chr(sp.idx_char) * len(sep) else 0
        sp.sep_indexed.push_back(flag)
    sp.sep_chars.push_back(0)   # keeps sep_chars[off] valid for empty separators
    sp.idx_len = 0
    if not have_idx:
        sp.idx_char = 0
    sp.idx_limit = 0
    cdef void* thread = NULL
    cdef vector[Chunk] dropped          # the splitter thread still owns sp.chunks, sp.joined
    cdef vector[Piece] dropped_pieces
    if THREADS > 1 and sp.n >= PARALLEL_MIN_CHARS:
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
            return sp.out
        sp.threaded = False
    with nogil:
        sp.split_range(0, sp.n, 0)
    if sp.error is not None:
        raise sp.error
    sp.flush()
    return sp.out


cdef void _produce(_Splitter sp) noexcept nogil:
    """The splitter thread: decide every chunk, hand the batches over, then say so."""
    sp.split_range(0, sp.n, 0)
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
    process may use two CPUs) decides the chunks on a second thread for texts of at least
    min_chars code points. None restores the default. Results never depend on these."""
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


def chunk_text(text, chunk_size, chunk_overlap, separators=None, keep_separator=True):
    """chunk_text(text: str, chunk_size: int, chunk_overlap: int, separators: list[str] | None = None, keep_separator: bool | str = True) -> list[str]

    The chunks of ``RecursiveCharacterTextSplitter(chunk_size=..., chunk_overlap=...,
    separators=..., keep_separator=...).split_text(text)`` (length = ``len``, literal separators,
    whitespace stripped). Raises ValueError on bad arguments (including overlap >= size).
    """
    return _run(text, chunk_size, chunk_overlap, separators, keep_separator, None)


def chunk_text_with_offsets(text, chunk_size, chunk_overlap, separators=None, keep_separator=True):
    """chunk_text_with_offsets(text: str, chunk_size: int, chunk_overlap: int, separators: list[str] | None = None, keep_separator: bool | str = True) -> tuple[list[str], list[int]]

    Like chunk_text, plus the start offset of each chunk in ``text``. With keep_separator true
    (the default) ``text[off:off + len(chunk)] == chunk``; with keep_separator=False a chunk may
    join pieces across a run of separators and the offset is where its first character is.
    """
    offsets = []
    chunks = _run(text, chunk_size, chunk_overlap, separators, keep_separator, offsets)
    return chunks, offsets

