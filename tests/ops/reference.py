"""Pure-Python reference implementations of the cython_ops operators.

Only the tests import this module: it states what each operator computes, as plainly as
possible, so the compiled versions can be checked against it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

DEFAULT_SEPARATORS = ["\n\n", "\n", " ", ""]

# --- chunking: LangChain's RecursiveCharacterTextSplitter, literal separators, len -----------


def _split_keep(text: str, sep: str, keep: bool | str) -> list[str]:
    if not sep:
        return [c for c in text]
    parts = text.split(sep)
    if not keep:
        splits = parts
    elif keep == "end":
        splits = [p + sep for p in parts[:-1]] + [parts[-1]]
    else:
        splits = [parts[0]] + [sep + p for p in parts[1:]]
    return [s for s in splits if s != ""]


def _merge(splits: list[str], sep: str, size: int, overlap: int) -> list[str]:
    docs: list[str] = []
    current: list[str] = []
    total = 0
    for d in splits:
        n = len(d)
        if total + n + (len(sep) if current else 0) > size:
            if current:
                doc = sep.join(current).strip()
                if doc:
                    docs.append(doc)
                while total > overlap or (total + n + (len(sep) if current else 0) > size and total > 0):
                    total -= len(current[0]) + (len(sep) if len(current) > 1 else 0)
                    current = current[1:]
        current.append(d)
        total += n + (len(sep) if len(current) > 1 else 0)
    doc = sep.join(current).strip()
    if doc:
        docs.append(doc)
    return docs


def chunk_text(
    text: str,
    chunk_size: int,
    chunk_overlap: int,
    separators: Sequence[str] | None = None,
    keep_separator: bool | str = True,
) -> list[str]:
    seps = list(separators) if separators else DEFAULT_SEPARATORS

    def split(text: str, seps: list[str]) -> list[str]:
        separator, rest = seps[-1], []
        for i, s in enumerate(seps):
            if s == "":
                separator = s
                break
            if s in text:
                separator, rest = s, seps[i + 1 :]
                break
        out: list[str] = []
        good: list[str] = []
        merge_sep = "" if keep_separator else separator
        for s in _split_keep(text, separator, keep_separator):
            if len(s) < chunk_size:
                good.append(s)
                continue
            if good:
                out.extend(_merge(good, merge_sep, chunk_size, chunk_overlap))
                good = []
            out.extend(split(s, rest) if rest else [s])
        if good:
            out.extend(_merge(good, merge_sep, chunk_size, chunk_overlap))
        return out

    return split(text, seps)


# --- top-k ------------------------------------------------------------------------------


def topk(matrix: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """Exact scores in float64, sorted by (-score, index)."""
    x = matrix.astype(np.float64)
    q = np.atleast_2d(queries).astype(np.float64)
    scores = q @ x.T
    if metric == "cosine":
        xn = np.linalg.norm(x, axis=1)
        qn = np.linalg.norm(q, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = scores / qn[:, None] / np.where(xn > 0, xn, 1.0)[None, :]
        scores[:, xn == 0] = 0.0
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    for j in range(q.shape[0]):
        order = np.lexsort((np.arange(x.shape[0]), -scores[j]))
        idx[j] = order[:k]
    top = np.take_along_axis(scores, idx, axis=1)
    if queries.ndim == 1:
        return idx[0], top[0]
    return idx, top


# --- BM25 -------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def bm25_scores(docs: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25) -> list[float]:
    """Okapi BM25 as rank_bm25.BM25Okapi defines it (negative IDF floored at epsilon * mean IDF)."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df: dict[str, int] = {}
    for d in docs:
        for w in dict.fromkeys(d):
            df[w] = df.get(w, 0) + 1
    idf = {w: math.log(n - f + 0.5) - math.log(f + 0.5) for w, f in df.items()}
    mean_idf = sum(idf.values()) / len(idf) if idf else 0.0
    idf = {w: (v if v >= 0 else epsilon * mean_idf) for w, v in idf.items()}
    tfs = [Counter(d) for d in docs]
    scores = []
    for d, tf in zip(docs, tfs):
        s = 0.0
        for w in query:
            f = tf.get(w, 0)
            if f == 0:
                continue  # an absent term adds nothing (rank_bm25 may compute 0/0 here)
            s += idf.get(w, 0.0) * (f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl)))
        scores.append(s)
    return scores


def bm25_topk(scores: list[float], k: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


# --- prefix hashing ---------------------------------------------------------------------

_M = (1 << 64) - 1
SEED = 0x243F6A8885A308D3
FNV_PRIME = 0x100000001B3


def _fmix64(z: int) -> int:
    z ^= z >> 33
    z = (z * 0xFF51AFD7ED558CCD) & _M
    z ^= z >> 33
    z = (z * 0xC4CEB9FE1A85EC53) & _M
    z ^= z >> 33
    return z


def prefix_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    out = []
    h = SEED
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        acc = h
        for t in token_ids[start : start + block_size]:
            acc = ((acc ^ int(t)) * FNV_PRIME) & _M
            acc ^= acc >> 29
        h = _fmix64(acc ^ block_size)
        out.append(h)
    return out


def longest_common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --- sampling: llama.cpp's chain order (top-k, top-p, min-p, temperature, draw) ---------------


def sample_logits(logits: Sequence[float], temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, u: float = 0.0) -> int:
    """The token `u` picks, as llama.cpp's samplers define the distribution: after a top-k or
    top-p the candidates are walked in descending logit order (ties: lower id first), otherwise
    in token-id order. Weights are float32 exponentials (as the operator computes them: a token
    whose weight underflows to 0 is never drawn), summed in float64."""
    x = np.asarray(logits, dtype=np.float32)

    def weight(value: float) -> float:
        return float(np.exp(np.float32(value)))

    finite = [i for i in range(len(x)) if x[i] > -math.inf]  # NaN and -inf never drawn
    best = max(finite, key=lambda i: (x[i], -i))
    if temperature <= 0:
        return best
    m = x[best]
    if top_k >= len(x):
        top_k = 0
    min_logit = np.float32(m + np.float32(math.log(min_p))) if min_p > 0 else -math.inf
    if top_k <= 0 and top_p >= 1.0:
        order = [i for i in finite if x[i] >= min_logit]
    else:
        order = sorted(finite, key=lambda i: (-x[i], i))
        if top_k > 0:
            order = order[:top_k]
        if top_p < 1.0:
            total = sum(weight(x[i] - m) for i in (order if top_k > 0 else finite))
            acc = 0.0
            for j, i in enumerate(order):
                acc += weight(x[i] - m)
                if acc >= top_p * total:
                    order = order[: j + 1]
                    break
        order = [order[0]] + [i for i in order[1:] if x[i] >= min_logit]
    inv_t = np.float32(1.0 / temperature)
    weights = [weight((x[i] - m) * inv_t) for i in order]
    target = u * sum(weights)
    acc = 0.0
    for i, w in zip(order, weights):
        acc += w
        if acc > target:
            return i
    return order[-1]
