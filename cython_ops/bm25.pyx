# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Okapi BM25 over an inverted index (CSR postings), scores identical to rank_bm25.BM25Okapi.

Tokenizer: ``text.lower()`` then maximal runs of word characters (``str.isalnum()`` or "_"),
i.e. ``re.findall(r"\\w+", text.lower())``. A query only touches the postings of its terms;
documents without any query term score 0 and still compete for the top k (scores can be
negative when rank_bm25's epsilon IDF floor is negative).
"""

import numpy as np
cimport numpy as cnp
from libc.math cimport log, isfinite
from libcpp.vector cimport vector

cnp.import_array()

cdef extern from "Python.h":
    int PyUnicode_READY(object o) except -1
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    Py_UCS4 PyUnicode_READ(int kind, const void* data, Py_ssize_t index) nogil
    bint Py_UNICODE_ISALNUM(Py_UCS4 ch) nogil
    object PyUnicode_Substring(object s, Py_ssize_t start, Py_ssize_t end)


cdef inline bint _is_word(Py_UCS4 ch) noexcept nogil:
    if ch < 128:
        return (ch >= 97 and ch <= 122) or (ch >= 48 and ch <= 57) or ch == 95 or (ch >= 65 and ch <= 90)
    return Py_UNICODE_ISALNUM(ch)


cdef list _tokens(str lowered):
    """Word tokens of an already lower-cased string."""
    cdef list out = []
    PyUnicode_READY(lowered)
    cdef int kind = PyUnicode_KIND(lowered)
    cdef const void* data = PyUnicode_DATA(lowered)
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(lowered)
    cdef Py_ssize_t i = 0, start
    while i < n:
        if _is_word(PyUnicode_READ(kind, data, i)):
            start = i
            i += 1
            while i < n and _is_word(PyUnicode_READ(kind, data, i)):
                i += 1
            out.append(PyUnicode_Substring(lowered, start, i))
        else:
            i += 1
    return out


def tokenize(text):
    """tokenize(text: str) -> list[str]

    The BM25 tokenizer: ``re.findall(r"\\w+", text.lower())``.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return _tokens(text.lower())


cdef struct Cand:
    double score
    long long doc


cdef inline bint _worse(double sa, long long ia, double sb, long long ib) noexcept nogil:
    return sa < sb or (sa == sb and ia > ib)


cdef void _heap_push(Cand* h, Py_ssize_t* size, Py_ssize_t k, double s, long long d) noexcept nogil:
    cdef Py_ssize_t pos, child, parent
    if size[0] < k:
        pos = size[0]
        size[0] += 1
        while pos > 0:
            parent = (pos - 1) >> 1
            if _worse(s, d, h[parent].score, h[parent].doc):
                h[pos] = h[parent]
                pos = parent
            else:
                break
        h[pos].score = s
        h[pos].doc = d
        return
    if not _worse(h[0].score, h[0].doc, s, d):
        return
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= k:
            break
        if child + 1 < k and _worse(h[child + 1].score, h[child + 1].doc, h[child].score, h[child].doc):
            child += 1
        if _worse(h[child].score, h[child].doc, s, d):
            h[pos] = h[child]
            pos = child
        else:
            break
    h[pos].score = s
    h[pos].doc = d


cdef void _sift(Cand* h, Py_ssize_t size) noexcept nogil:
    """Restore the min-heap property of h[0:size] after replacing the root."""
    cdef Py_ssize_t pos = 0, child
    cdef Cand x
    if size <= 0:
        return
    x = h[0]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(h[child + 1].score, h[child + 1].doc, h[child].score, h[child].doc):
            child += 1
        if _worse(h[child].score, h[child].doc, x.score, x.doc):
            h[pos] = h[child]
            pos = child
        else:
            break
    h[pos] = x


# NLTK's English stop-word list (as bm25s and Pyserini use one): questions are full of these
# ("how do I ... the ..."), and with BM25's IDF floor each still adds a little score, most to long
# chunks; dropped from documents and queries they stop drowning the rare terms that matter.
ENGLISH_STOPWORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves
he him his himself she she's her hers herself it it's its itself they them their theirs themselves
what which who whom this that that'll these those am is are was were be been being have has had
having do does did doing a an the and but if or because as until while of at by for with about
against between into through during before after above below to from up down in out on off over
under again further then once here there when where why how all any both each few more most other
some such no nor not only own same so than too very s t can will just don don't should should've
now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn
hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn
shouldn't wasn wasn't weren weren't won won't wouldn wouldn't
""".split())


cdef class BM25Index:
    """BM25Index(documents: Sequence[str], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25, stopwords: Iterable[str] = ())

    Okapi BM25 index with rank_bm25.BM25Okapi's scoring (including its epsilon floor for
    negative IDF: such terms get ``epsilon * mean(idf)``). Tokens in ``stopwords`` (lower case;
    e.g. ENGLISH_STOPWORDS) are left out of documents and queries alike.
    """
    cdef readonly Py_ssize_t n_docs
    cdef readonly Py_ssize_t n_terms
    cdef readonly double k1, b, epsilon, avgdl, average_idf
    cdef dict vocab
    cdef readonly frozenset stopwords
    cdef vector[long long] indptr     # n_terms + 1
    cdef vector[int] post_doc
    cdef vector[double] post_tf
    cdef vector[double] idf
    cdef vector[double] norm          # k1 * (1 - b + b * len / avgdl), per document
    cdef vector[double] acc           # scratch: per-document score of the current query
    cdef vector[char] seen            # scratch: document touched by the current query

    def __init__(self, documents, k1=1.5, b=0.75, epsilon=0.25, stopwords=()):
        if isinstance(documents, str) or not hasattr(documents, "__iter__"):
            raise ValueError("documents must be a sequence of str")
        for name, v in (("k1", k1), ("b", b), ("epsilon", epsilon)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if k1 < 0:
            raise ValueError(f"k1 must be >= 0, got {k1}")
        if not 0 <= b <= 1:
            raise ValueError(f"b must be in [0, 1], got {b}")
        self.k1 = k1
        self.b = b
        self.epsilon = epsilon
        if isinstance(stopwords, str):
            raise ValueError("stopwords must be a collection of words, not one str")
        self.stopwords = frozenset(stopwords)
        cdef frozenset stop = self.stopwords
        self.vocab = {}
        cdef dict vocab = self.vocab
        cdef vector[int] tokens
        cdef vector[long long] doc_ptr
        cdef Py_ssize_t t
        doc_ptr.push_back(0)
        for doc in documents:
            if not isinstance(doc, str):
                raise ValueError(f"documents must be str, got {type(doc).__name__}")
            for tok in _tokens(doc.lower()):
                if stop and tok in stop:
                    continue
                t = vocab.get(tok, -1)
                if t < 0:
                    t = len(vocab)
                    vocab[tok] = t
                tokens.push_back(<int> t)
            doc_ptr.push_back(<long long> tokens.size())
        self.n_docs = <Py_ssize_t> doc_ptr.size() - 1
        if self.n_docs == 0:
            raise ValueError("documents must hold at least one document")
        self.n_terms = len(vocab)
        with nogil:
            self._build(tokens, doc_ptr)

    cdef void _build(self, vector[int]& tokens, vector[long long]& doc_ptr) noexcept nogil:
        cdef Py_ssize_t nd = self.n_docs, nt = self.n_terms
        cdef Py_ssize_t d, j, t, i, u
        cdef vector[long long] df
        cdef vector[long long] last           # last document each term was counted in
        cdef vector[int] count                # per-term count in the current document
        cdef vector[int] uniq
        cdef vector[long long] fill
        cdef double total_len = 0
        df.assign(nt, 0)
        last.assign(nt, -1)
        count.assign(nt, 0)
        for d in range(nd):
            total_len += doc_ptr[d + 1] - doc_ptr[d]
            for j in range(doc_ptr[d], doc_ptr[d + 1]):
                t = tokens[j]
                if last[t] != d:
                    last[t] = d
                    df[t] += 1
        self.avgdl = total_len / nd
        self.indptr.assign(nt + 1, 0)
        for t in range(nt):
            self.indptr[t + 1] = self.indptr[t] + df[t]
        self.post_doc.assign(self.indptr[nt], 0)
        self.post_tf.assign(self.indptr[nt], 0)
        fill.assign(self.indptr.begin(), self.indptr.end() - 1)
        last.assign(nt, -1)
        for d in range(nd):
            uniq.clear()
            for j in range(doc_ptr[d], doc_ptr[d + 1]):
                t = tokens[j]
                if last[t] != d:
                    last[t] = d
                    count[t] = 0
                    uniq.push_back(<int> t)
                count[t] += 1
            for u in range(<Py_ssize_t> uniq.size()):
                t = uniq[u]
                self.post_doc[fill[t]] = <int> d
                self.post_tf[fill[t]] = count[t]
                fill[t] += 1
        # rank_bm25 BM25Okapi._calc_idf: terms in first-appearance order (= our term ids).
        cdef double idf_sum = 0, v
        self.idf.assign(nt, 0)
        for t in range(nt):
            v = log(nd - df[t] + 0.5) - log(df[t] + 0.5)
            self.idf[t] = v
            idf_sum += v
        self.average_idf = idf_sum / nt if nt > 0 else 0.0
        cdef double eps = self.epsilon * self.average_idf
        for t in range(nt):
            if self.idf[t] < 0:
                self.idf[t] = eps
        self.norm.assign(nd, 0)
        for d in range(nd):
            if self.avgdl > 0:
                self.norm[d] = self.k1 * (1 - self.b + self.b * (doc_ptr[d + 1] - doc_ptr[d]) / self.avgdl)
            else:
                self.norm[d] = self.k1 * (1 - self.b)
        self.acc.assign(nd, 0)
        self.seen.assign(nd, 0)

    cdef vector[int] _query_terms(self, object query) except *:
        if not isinstance(query, str):
            raise ValueError(f"query must be a str, got {type(query).__name__}")
        cdef vector[int] ids
        cdef dict vocab = self.vocab
        cdef frozenset stop = self.stopwords
        for tok in _tokens(query.lower()):
            if stop and tok in stop:
                continue
            t = vocab.get(tok)
            if t is not None:       # unknown terms score 0 in rank_bm25 too
                ids.push_back(<int> t)
        return ids

    cdef void _accumulate(self, const int* terms, Py_ssize_t nq, vector[int]& touched) noexcept nogil:
        """acc[d] += idf * tf * (k1 + 1) / (tf + norm[d]) for each query token, in query order
        (the order rank_bm25 adds them in), recording the touched documents."""
        cdef Py_ssize_t qi, p
        cdef int t, d
        cdef double w, tf, k1p = self.k1 + 1
        for qi in range(nq):
            t = terms[qi]
            w = self.idf[t]
            for p in range(self.indptr[t], self.indptr[t + 1]):
                d = self.post_doc[p]
                tf = self.post_tf[p]
                if not self.seen[d]:
                    self.seen[d] = 1
                    touched.push_back(d)
                self.acc[d] += w * (tf * k1p / (tf + self.norm[d]))

    cdef void _topk_one(self, const int* terms, Py_ssize_t nq, Py_ssize_t k, Cand* heap,
                        double* out_s, long long* out_i) noexcept nogil:
        cdef vector[int] touched
        cdef Py_ssize_t size = 0, i, pos
        cdef int d
        cdef Cand tmp
        self._accumulate(terms, nq, touched)
        for i in range(<Py_ssize_t> touched.size()):
            d = touched[i]
            _heap_push(heap, &size, k, self.acc[d], d)
        # Documents without any query term score exactly 0: the lowest-index ones compete.
        if size < k or heap[0].score <= 0:
            i = 0
            pos = 0
            while i < self.n_docs and pos < k:
                if not self.seen[i]:
                    _heap_push(heap, &size, k, 0.0, i)
                    pos += 1
                i += 1
        for i in range(<Py_ssize_t> touched.size()):
            d = touched[i]
            self.acc[d] = 0
            self.seen[d] = 0
        # Heap sort, best first.
        for pos in range(size - 1, -1, -1):
            out_s[pos] = heap[0].score
            out_i[pos] = heap[0].doc
            tmp = heap[pos]
            heap[pos] = heap[0]
            heap[0] = tmp
            _sift(heap, pos)

    def get_scores(self, query):
        """get_scores(query: str) -> np.ndarray[float64]: the BM25 score of every document."""
        cdef vector[int] terms = self._query_terms(query)
        cdef vector[int] touched
        out = np.zeros(self.n_docs, dtype=np.float64)
        cdef double[::1] o = out
        cdef Py_ssize_t i
        with nogil:
            self._accumulate(terms.data(), <Py_ssize_t> terms.size(), touched)
            for i in range(<Py_ssize_t> touched.size()):
                o[touched[i]] = self.acc[touched[i]]
                self.acc[touched[i]] = 0
                self.seen[touched[i]] = 0
        return out

    def _check_k(self, k):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k must be an int, got {type(k).__name__}")
        if k <= 0 or k > self.n_docs:
            raise ValueError(f"k must be in 1..n_docs={self.n_docs}, got {k}")

    def search(self, query, k=10):
        """search(query: str, k: int = 10) -> tuple[np.ndarray[int64], np.ndarray[float64]]

        The k best documents (indices, scores), score descending, ties by lower index."""
        self._check_k(k)
        idx, sc = self.search_batch([query], k)
        return idx[0], sc[0]

    def search_batch(self, queries, k=10):
        """search_batch(queries: Sequence[str], k: int = 10) -> tuple[np.ndarray[int64], np.ndarray[float64]]

        Top k for each query, arrays of shape (len(queries), k)."""
        self._check_k(k)
        if isinstance(queries, str):
            raise ValueError("queries must be a sequence of str, not a str")
        cdef vector[int] flat
        cdef vector[long long] qptr
        cdef vector[int] ids
        qptr.push_back(0)
        for q in queries:
            ids = self._query_terms(q)
            flat.insert(flat.end(), ids.begin(), ids.end())
            qptr.push_back(<long long> flat.size())
        cdef Py_ssize_t m = <Py_ssize_t> qptr.size() - 1, kk = k, j
        out_i = np.empty((m, kk), dtype=np.int64)
        out_s = np.empty((m, kk), dtype=np.float64)
        if m == 0:
            return out_i, out_s
        cdef long long[:, ::1] oi = out_i
        cdef double[:, ::1] os = out_s
        cdef vector[Cand] heap
        heap.resize(kk)
        cdef const int* base = flat.data()
        with nogil:
            for j in range(m):
                self._topk_one(base + qptr[j], qptr[j + 1] - qptr[j], kk, heap.data(), &os[j, 0], &oi[j, 0])
        return out_i, out_s


