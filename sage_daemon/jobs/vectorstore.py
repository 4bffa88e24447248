"""Named vector collections for `index` and `retrieve`, persisted in the data directory.

Each collection is a folder: `vectors.f32` (rows of float32, memory-mapped for search) and
`meta.sqlite` (WAL: id → row, text, metadata; the collection's model and dimensions). Writes are
upserts by item id, so a retried job rewrites rows instead of adding duplicates. A row is
written to the vector file before its id is committed in SQLite; on open, rows past the last
committed one (a crash in between) are cut off.

The lexical index is kept with the collection as its persisted corpus: each id's text in
`items` (replaced, never appended, on an upsert of the same id, so a retried job leaves no
duplicate postings) and the `lexical_version` stamp in `info`, bumped in the same SQLite
transaction as the texts it describes. The `cython_ops.BM25Index` over that corpus is derived
state, built lazily on the first lexical search after a change and cached in memory under the
stamp it was built from: a stamp read back from SQLite that differs (another writer, a reopen)
rebuilds it. No second copy of the postings is written to disk, so there is nothing that can
disagree with the texts after a crash; building is cheap (about 2 s for 100k chunks of 130
tokens on one core) and happens once per change, not per query.

Search modes: "dense" (the compiled `cython_ops.topk` by cosine over the mapped matrix),
"bm25" (the lexical index alone: query texts, no vectors) and "hybrid" (both rankings fused by
weighted reciprocal rank fusion, `fuse_rrf`).

All methods block (file and SQLite I/O): call them from worker threads.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import msgspec
import numpy as np

from cython_ops import ENGLISH_STOPWORDS, BM25Index, topk
from sage_client.protocol import CollectionRow
from sage_daemon.core.errors import InvalidRequestError, NotFoundError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RRF_K = 60  # the usual reciprocal-rank-fusion constant
SearchMode = Literal["dense", "bm25", "hybrid"]
SEARCH_MODES: tuple[str, ...] = get_args(SearchMode)
HYBRID_DEPTH = 4  # hybrid search fuses the top (HYBRID_DEPTH * k) of each ranking


def fuse_rrf(rankings: Sequence[Sequence[int]], weights: Sequence[float], k: int, rrf_k: int = RRF_K) -> list[tuple[int, float]]:
    """Weighted reciprocal rank fusion: score(d) = sum over rankings i of w_i / (rrf_k + rank_i(d)),
    ranks 1-based, a ranking that lacks d adding nothing. The k best (key, score), score
    descending; ties keep the order in which the keys were first met (ranking 0 first, then by
    rank). A ranking with weight 0 is left out altogether (its keys are not candidates)."""
    if len(rankings) != len(weights):
        raise ValueError(f"fuse_rrf: {len(rankings)} rankings and {len(weights)} weights")
    if any(w < 0 for w in weights):
        raise ValueError(f"fuse_rrf: weights must be >= 0, got {list(weights)}")
    fused: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        if weight == 0:
            continue
        for rank, key in enumerate(ranking, 1):
            fused[key] = fused.get(key, 0.0) + weight / (rrf_k + rank)
    return sorted(fused.items(), key=lambda kv: -kv[1])[: max(0, k)]


class CollectionNotFoundError(NotFoundError):
    """No collection of that name: a 404 / `not_found`."""


# The store describes a collection with the wire type `sagectl collection` shows: one shape.
CollectionInfo = CollectionRow


class Hit(msgspec.Struct):
    id: str
    text: str
    score: float
    metadata: dict[str, Any] = {}


class Collection:
    def __init__(self, path: Path, name: str, create: bool, dimensions: int = 0, model: str = ""):
        self.name = name
        self.path = path
        self._lock = threading.RLock()
        path.mkdir(parents=True, exist_ok=True) if create else None
        if not (path / "meta.sqlite").exists() and not create:
            raise CollectionNotFoundError(f"no collection named {name!r}")
        self.db = sqlite3.connect(path / "meta.sqlite", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, row INTEGER NOT NULL UNIQUE, text TEXT NOT NULL, metadata TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        now = str(time.time())
        for key, value in (("dimensions", str(dimensions)), ("model", model), ("created_at", now), ("updated_at", now), ("lexical_version", "0")):
            self.db.execute("INSERT OR IGNORE INTO info VALUES (?, ?)", (key, value))
        self.info_values = dict(self.db.execute("SELECT key, value FROM info").fetchall())
        self.dimensions = int(self.info_values["dimensions"])
        self.model = self.info_values["model"]
        self.count = self.db.execute("SELECT COALESCE(MAX(row) + 1, 0) FROM items").fetchone()[0]
        self.vectors_path = path / "vectors.f32"
        self.vectors_path.touch()
        if self.dimensions:
            # Rows written after the last committed id (a crash between the two writes) are not ours.
            keep = self.count * self.dimensions * 4
            if self.vectors_path.stat().st_size != keep:
                with self.vectors_path.open("r+b") as f:
                    f.truncate(keep)
        self._matrix: np.ndarray | None = None
        self._bm25: tuple[int, BM25Index, list[int]] | None = None  # (lexical_version it was built at, index, row of each document)

    def close(self) -> None:
        with self._lock:
            self._matrix = None
            self.db.close()

    # ------------------------------------------------------------------ writes

    def upsert(self, ids: list[str], vectors: list[list[float]] | np.ndarray, texts: list[str], metadata: list[dict[str, Any]], model: str = "") -> int:
        """Insert or replace items by id; returns how many were new."""
        matrix = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise InvalidRequestError(f"collection {self.name!r}: need one vector per item ({len(ids)} items, vectors of shape {matrix.shape})")
        with self._lock:
            if not self.dimensions:
                self.dimensions = matrix.shape[1]
                self.model = model or self.model
                self.db.execute("UPDATE info SET value = ? WHERE key = 'dimensions'", (str(self.dimensions),))
                self.db.execute("UPDATE info SET value = ? WHERE key = 'model'", (self.model,))
            if matrix.shape[1] != self.dimensions:
                raise InvalidRequestError(f"collection {self.name!r} holds {self.dimensions}-dimensional vectors; got {matrix.shape[1]} (model {model or '?'})")
            # Last write of an id within a batch wins, as it would across batches.
            latest = {item_id: n for n, item_id in enumerate(ids)}
            existing = dict(self._rows_of(list(latest)))
            rows: list[int] = []
            new = 0
            for item_id in latest:
                if item_id in existing:
                    rows.append(existing[item_id])
                else:
                    rows.append(self.count + new)
                    new += 1
            order = list(latest.values())
            with self.vectors_path.open("r+b") as f:
                for row, n in sorted(zip(rows, order)):
                    f.seek(row * self.dimensions * 4)
                    f.write(matrix[n].tobytes())
                f.flush()
            self.db.execute("BEGIN")
            try:
                self.db.executemany(
                    "INSERT INTO items (id, row, text, metadata) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET text = excluded.text, metadata = excluded.metadata",
                    [(ids[n], row, texts[n], json.dumps(metadata[n], default=str)) for row, n in zip(rows, order)],
                )
                self.db.execute("UPDATE info SET value = ? WHERE key = 'updated_at'", (str(time.time()),))
                # The lexical index's stamp moves with the texts it describes, in one transaction.
                self.db.execute("UPDATE info SET value = CAST(value AS INTEGER) + 1 WHERE key = 'lexical_version'")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.count += new
            self._matrix = None
            self._bm25 = None
            return new

    def _rows_of(self, ids: list[str]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            out += self.db.execute(f"SELECT id, row FROM items WHERE id IN ({','.join('?' * len(part))})", part).fetchall()
        return out

    # ------------------------------------------------------------------ reads

    def matrix(self) -> np.ndarray:
        with self._lock:
            if self._matrix is None or self._matrix.shape[0] != self.count:
                self._matrix = np.memmap(self.vectors_path, dtype=np.float32, mode="r", shape=(self.count, self.dimensions)) if self.count else np.zeros((0, max(1, self.dimensions)), np.float32)
            return self._matrix

    def _items_at(self, rows: list[int]) -> dict[int, tuple[str, str, dict[str, Any]]]:
        found = self.db.execute(f"SELECT row, id, text, metadata FROM items WHERE row IN ({','.join('?' * len(rows))})", rows).fetchall()
        return {row: (item_id, text, json.loads(meta)) for row, item_id, text, meta in found}

    def lexical_version(self) -> int:
        """The stamp of the stored texts (bumped by every upsert): the BM25 cache is valid for one."""
        with self._lock:
            return int(self.db.execute("SELECT value FROM info WHERE key = 'lexical_version'").fetchone()[0])

    def _bm25_index(self) -> tuple[BM25Index, list[int]]:
        """The BM25 index over the stored texts (document n is row rows[n]), rebuilt when the stamp moved."""
        version = self.lexical_version()
        if self._bm25 is None or self._bm25[0] != version:
            rows_texts = self.db.execute("SELECT row, text FROM items ORDER BY row").fetchall()
            # English stop words left out: question words (how, do, the) would drown the rare terms.
            self._bm25 = (version, BM25Index([t for _, t in rows_texts], stopwords=ENGLISH_STOPWORDS), [r for r, _ in rows_texts])
        return self._bm25[1], self._bm25[2]

    def bm25_stats(self) -> tuple[int, int]:
        """(documents, distinct terms) of the lexical index: one document per stored id."""
        with self._lock:
            index, _ = self._bm25_index()
            return int(index.n_docs), int(index.n_terms)

    def _dense(self, queries: np.ndarray, depth: int) -> list[list[tuple[int, float]]]:
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.dimensions:
            raise InvalidRequestError(f"collection {self.name!r} holds {self.dimensions}-dimensional vectors; the query has shape {queries.shape}")
        rows, scores = topk(self.matrix(), queries, depth, "cosine")
        return [list(zip(r.tolist(), s.tolist())) for r, s in zip(rows, scores)]

    def _lexical(self, texts: list[str], depth: int) -> list[list[tuple[int, float]]]:
        """BM25 hits (row, score) per query text; documents that share no term with it are left out."""
        index, bm_rows = self._bm25_index()
        if not texts or index.n_docs == 0:
            return [[] for _ in texts]
        docs, scores = index.search_batch(texts, min(depth, int(index.n_docs)))
        return [[(bm_rows[d], s) for d, s in zip(ds, ss) if s != 0.0] for ds, ss in zip(docs.tolist(), scores.tolist())]

    def search(
        self,
        queries: np.ndarray | None,
        k: int,
        texts: list[str] | None = None,
        mode: SearchMode = "dense",
        weights: tuple[float, float] | Sequence[float] = (1.0, 1.0),
        *,
        hybrid: bool = False,
    ) -> list[list[Hit]]:
        """Top k hits per query. "dense": by cosine similarity of the query vectors (`queries`);
        "bm25": by BM25 of the query `texts` (`queries` may be None); "hybrid": both rankings
        fused by weighted reciprocal rank fusion, `weights` = (dense, bm25). A hit's score is
        the cosine, the BM25 score or the fused score. `hybrid=True` is the old spelling of
        mode="hybrid"."""
        if hybrid and mode == "dense":
            mode = "hybrid"
        if mode not in SEARCH_MODES:
            raise InvalidRequestError(f"search mode {mode!r}: use one of {', '.join(SEARCH_MODES)}", param="mode")
        if mode != "dense" and texts is None:
            raise InvalidRequestError(f"{mode} search needs the query texts", param="texts")
        if mode != "bm25" and queries is None:
            raise InvalidRequestError(f"{mode} search needs the query vectors", param="queries")
        n = len(queries) if queries is not None else len(texts or [])
        if texts is not None and mode != "dense" and len(texts) != n:
            raise InvalidRequestError(f"{len(texts)} query texts for {n} query vectors", param="texts")
        weights = tuple(float(w) for w in weights)
        if mode == "hybrid" and (len(weights) != 2 or min(weights) < 0 or max(weights) == 0):
            raise InvalidRequestError(f"weights {list(weights)}: give two (dense, bm25), >= 0, not both 0", param="weights")
        with self._lock:
            if self.count == 0 or k < 1:
                return [[] for _ in range(n)]
            kk = min(k, self.count)
            results: list[list[tuple[int, float]]]
            if mode == "dense":
                assert queries is not None
                results = self._dense(queries, kk)
            elif mode == "bm25":
                assert texts is not None
                results = self._lexical(texts, kk)
            else:
                assert queries is not None and texts is not None
                depth = min(self.count, kk * HYBRID_DEPTH)
                dense = self._dense(queries, depth)
                lexical = self._lexical(texts, depth)
                results = [fuse_rrf([[r for r, _ in d], [r for r, _ in b]], weights, kk) for d, b in zip(dense, lexical)]
            wanted = sorted({row for hits in results for row, _ in hits})
            items = self._items_at(wanted) if wanted else {}
            return [[Hit(items[row][0], items[row][1], float(score), items[row][2]) for row, score in hits[:kk] if row in items] for hits in results]

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.db.execute("SELECT id FROM items ORDER BY row")]

    def info(self) -> CollectionInfo:
        with self._lock:
            values = dict(self.db.execute("SELECT key, value FROM info").fetchall())
            size = sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())
            return CollectionInfo(self.name, self.count, self.dimensions, self.model, float(values["created_at"]), float(values["updated_at"]), str(self.path), size)


class CollectionStore:
    """The collections under `root` (data_dir/collections); opened once, shared by all jobs."""

    def __init__(self, root: Path):
        self.root = root
        self._open: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def _check(self, name: str) -> None:
        if not NAME.match(name):
            raise InvalidRequestError(f"collection name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)", param="collection")

    def get(self, name: str, create: bool = False) -> Collection:
        self._check(name)
        with self._lock:
            if name not in self._open:
                self._open[name] = Collection(self.root / name, name, create)
            return self._open[name]

    def exists(self, name: str) -> bool:
        return name in self._open or (self.root / name / "meta.sqlite").exists()

    def list(self) -> list[CollectionInfo]:
        if not self.root.exists():
            return []
        return [self.get(p.name).info() for p in sorted(self.root.iterdir()) if (p / "meta.sqlite").exists()]

    def drop(self, name: str) -> CollectionInfo:
        collection = self.get(name)
        info = collection.info()
        with self._lock:
            collection.close()
            self._open.pop(name, None)
            shutil.rmtree(self.root / name)
        return info

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
