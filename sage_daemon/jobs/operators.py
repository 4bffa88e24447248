"""What each operator does to items, independent of the executor that runs it.

Items are usually dicts with an "id" (the key collection writes are idempotent by) and fields
such as "text", "vector", "question", "contexts", "prompt", "answer". CPU work (sources, cheap
operators, collection writes, sinks) is plain blocking code, run on worker threads by the local
executor and inside Ray tasks by the Ray executor. Model work is `async` over a `ModelClient`:
the control plane in-process, or the daemon's RPC socket from a Ray worker.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np

from cython_ops import MARKDOWN_SEPARATORS, chunk_text_with_offsets, chunk_texts_with_offsets
from sage_daemon.engines.base import ChatMessage, GenerationRequest, SamplingParams
from sage_daemon.jobs import spec as s
from sage_daemon.jobs.access import check_path
from sage_daemon.jobs.planner import PhysicalStage
from sage_daemon.jobs.vectorstore import CollectionStore

SOURCE_PACKET = 32  # items per packet from a source


class ItemError(Exception):
    """A user function or an operator failed on one item: names the stage and the item."""

    def __init__(self, stage: str, key: str, cause: BaseException | str):
        detail = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"stage {stage!r} failed on item {key}: {detail}")
        self.stage = stage
        self.key = key
        self.detail = detail


class ModelClient(Protocol):
    async def embed(self, model: str, texts: list[str]) -> list[list[float]]: ...

    async def generate(self, model: str, request: GenerationRequest, chat: bool) -> str: ...

    async def rerank(self, model: str, query: str, documents: list[str]) -> list[float]:
        """The relevance of each document to the query, in document order (higher is better):
        a reranker's score, or an embedding model's cosine similarity."""
        ...


def item_key(item: Any) -> str:
    if isinstance(item, dict) and "id" in item:
        return repr(str(item["id"]))
    text = repr(item)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_path(base_dir: str, path: str) -> str:
    expanded = os.path.expanduser(path)
    return expanded if os.path.isabs(expanded) or not base_dir else os.path.join(base_dir, expanded)


# ----------------------------------------------------------------------------- sources


def sink_path(base_dir: str, path: str, roots: tuple[str, ...] | None = None) -> str:
    """A to_jsonl sink's file, checked against the job's allowed roots before anything is created."""
    return check_path(resolve_path(base_dir, path), roots, "write")


def source_items(stage: s._Stage, base_dir: str, roots: tuple[str, ...] | None = None) -> Iterator[Any]:
    """The source's items, lazily (files are read as they are reached). `roots`: each file's
    real path must lie under one (a user peer's job); None: any file."""
    if isinstance(stage, s.FromItems):
        for n, item in enumerate(stage.items):
            if isinstance(item, dict) and "id" not in item:
                item = {"id": f"item-{n}", **item}
            yield item
    elif isinstance(stage, s.FromFiles):
        seen: set[str] = set()
        for pattern in stage.paths:
            full = resolve_path(base_dir, pattern)
            matches = sorted(glob.glob(full, recursive=True)) if glob.has_magic(full) else [full]
            if not matches or (not glob.has_magic(full) and not os.path.exists(full)):
                raise FileNotFoundError(f"from_files: nothing matches {pattern!r} (in {base_dir or os.getcwd()})")
            for path in matches:
                if path in seen or os.path.isdir(path):
                    continue
                seen.add(path)
                check_path(path, roots, "read")
                rel = os.path.relpath(path, base_dir) if base_dir else path
                if path.endswith(".jsonl"):
                    yield from _jsonl(path, rel, "id", stage.encoding)
                else:
                    yield {"id": rel, "text": Path(path).read_text(encoding=stage.encoding, errors="replace"), "path": rel}
    elif isinstance(stage, s.FromJsonl):
        path = check_path(resolve_path(base_dir, stage.path), roots, "read")
        yield from _jsonl(path, os.path.relpath(path, base_dir) if base_dir else path, stage.id_field, "utf-8")


def _jsonl(path: str, rel: str, id_field: str, encoding: str) -> Iterator[Any]:
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{rel}:{lineno}: not JSON: {exc}") from None
            if isinstance(item, dict):
                item["id"] = str(item.get(id_field, f"{rel}:{lineno}"))
            yield item


def packets(items: Iterator[Any], size: int = SOURCE_PACKET) -> Callable[[], list[Any]]:
    """A blocking 'next packet' function over an iterator (empty list at the end)."""
    return lambda: list(itertools.islice(items, size))


# ----------------------------------------------------------------------------- cheap operators


def _as_record(item: Any, field: str) -> dict[str, Any]:
    return item if isinstance(item, dict) else {field: item}


class _SafeFormat(dict[str, Any]):
    def __missing__(self, key: str) -> Any:
        raise KeyError(f"the template uses {{{key}}} and the item has no field {key!r}")


def item_op(op: s._Stage, fn: Callable[[Any], Any] | None) -> Callable[[Any], list[Any]]:
    """One item in, zero or more out."""
    if isinstance(op, s.Map):
        return lambda item: [fn(item)]  # type: ignore[misc]
    if isinstance(op, s.FlatMap):
        return lambda item: list(fn(item) or ())  # type: ignore[misc]
    if isinstance(op, s.Filter):
        return lambda item: [item] if fn(item) else []  # type: ignore[misc]
    if isinstance(op, s.Chunk):
        return ChunkOp(op)
    if isinstance(op, s.Prompt):
        fields = [name for _, name, _, _ in string.Formatter().parse(op.template) if name]

        def prompt(item: Any) -> list[Any]:
            record = _as_record(item, "question")
            values = _SafeFormat(record)
            if "context" in fields and "context" not in record:
                contexts = record.get(op.contexts_field) or []
                values["context"] = "\n\n".join(f"[{n + 1}] {c['text'] if isinstance(c, dict) else c}" for n, c in enumerate(contexts))
            return [{**record, op.output: string.Formatter().vformat(op.template, (), values)}]

        return prompt
    raise AssertionError(f"not an item-wise operator: {s.op_of(op)}")


class ChunkOp:
    """`chunk`: one item in, its pieces out (ids "PARENT#N", with "parent" and "offset"). `many`
    chunks a whole packet in one call of the compiled splitter (its thread working through all
    of them), the way the job stage runs it."""

    def __init__(self, op: s.Chunk):
        self.op = op
        self.separators: Any = MARKDOWN_SEPARATORS if op.separators == "markdown" else op.separators

    def _text(self, item: Any) -> tuple[dict[str, Any], str]:
        record = _as_record(item, self.op.field)
        text = record.get(self.op.field)
        if not isinstance(text, str):
            raise ValueError(f"field {self.op.field!r} is missing or not text")
        return record, text

    def _pieces(self, record: dict[str, Any], pieces: list[str], offsets: list[int]) -> list[Any]:
        field = self.op.field
        parent = str(record.get("id", ""))
        base = {k: v for k, v in record.items() if k != field}
        return [{**base, "id": f"{parent}#{n}", field: piece, "parent": parent, "offset": off} for n, (piece, off) in enumerate(zip(pieces, offsets))]

    def __call__(self, item: Any) -> list[Any]:
        record, text = self._text(item)
        pieces, offsets = chunk_text_with_offsets(text, self.op.size, self.op.overlap, self.separators)
        return self._pieces(record, pieces, offsets)

    def many(self, items: list[Any]) -> list[list[Any] | Exception]:
        """Each item's pieces, or the error that item alone raises (the others are chunked)."""
        out: list[list[Any] | Exception] = []
        good: list[tuple[int, dict[str, Any], str]] = []
        for item in items:
            try:
                record, text = self._text(item)
            except ValueError as exc:
                out.append(exc)
                continue
            good.append((len(out), record, text))
            out.append([])
        pieces, offsets = chunk_texts_with_offsets([text for _, _, text in good], self.op.size, self.op.overlap, self.separators)
        for (index, record, _), mine, where in zip(good, pieces, offsets):
            out[index] = self._pieces(record, mine, where)
        return out


class BatchOp:
    """`batch(n)`: lists of n items (the last may be shorter). Stateful: one worker."""

    def __init__(self, size: int):
        self.size = size
        self.open: list[Any] = []

    def push(self, item: Any) -> list[Any]:
        self.open.append(item)
        if len(self.open) >= self.size:
            out, self.open = [self.open], []
            return out
        return []

    def flush(self) -> list[Any]:
        out, self.open = ([self.open] if self.open else []), []
        return out


# ----------------------------------------------------------------------------- model operators


def _field_text(item: Any, field: str) -> str:
    value = item.get(field) if isinstance(item, dict) else item
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} is missing or not text")
    return value


async def embed_items(op: s.Embed, items: list[Any], models: ModelClient) -> list[Any]:
    texts = [_field_text(item, op.field) for item in items]
    vectors = await models.embed(op.model, texts)
    return [{**_as_record(item, op.field), op.output: vector} for item, vector in zip(items, vectors)]


def _context_text(context: Any) -> str:
    return str(context["text"]) if isinstance(context, dict) else str(context)


async def rerank_contexts(models: ModelClient, model: str, query: str, contexts: list[Any], keep: int) -> list[dict[str, Any]]:
    """`contexts` ordered by the model's score for `query` (ties keep their order), the best `keep`,
    each a dict with its `rerank_score`."""
    if not contexts:
        return []
    scores = await models.rerank(model, query, [_context_text(c) for c in contexts])
    if len(scores) != len(contexts):
        raise ValueError(f"rerank model {model!r} returned {len(scores)} scores for {len(contexts)} documents")
    order = sorted(range(len(contexts)), key=lambda n: -float(scores[n]))[:keep]
    return [{**(contexts[n] if isinstance(contexts[n], dict) else {"text": contexts[n]}), "rerank_score": float(scores[n])} for n in order]


async def retrieve_items(op: s.Retrieve, items: list[Any], models: ModelClient, collections: CollectionStore, to_thread: Callable[..., Any]) -> list[Any]:
    collection = await to_thread(collections.get, op.collection)
    texts = [_field_text(item, op.field) for item in items]
    vectors: np.ndarray | None = None
    if op.mode != "bm25":
        model = op.model or collection.model
        if not model:
            raise ValueError(f"collection {op.collection!r} is empty and has no model; index into it first or give retrieve a model")
        vectors = np.asarray(await models.embed(model, texts), dtype=np.float32)
    depth = max(op.k, op.rerank_candidates) if op.rerank_model else op.k
    hits = await to_thread(collection.search, vectors, depth, texts, op.mode, tuple(op.weights))
    out = []
    for item, text, found in zip(items, texts, hits):
        contexts: list[Any] = [msgspec.to_builtins(h) for h in found]
        if op.rerank_model:
            contexts = await rerank_contexts(models, op.rerank_model, text, contexts, op.k)
        out.append({**_as_record(item, op.field), op.output: contexts})
    return out


async def rerank_items(op: s.Rerank, items: list[Any], models: ModelClient) -> list[Any]:
    out = []
    for item in items:
        record = _as_record(item, op.field)
        contexts = list(record.get(op.contexts_field) or [])
        if not contexts:
            out.append(record)
            continue
        ranked = await rerank_contexts(models, op.model, _field_text(record, op.field), contexts, op.top_n)
        out.append({**record, op.contexts_field: ranked})
    return out


def generation_request(op: s.Generate, item: Any, request_id: str) -> GenerationRequest:
    prompt = _field_text(item, op.field)
    sampling = SamplingParams(
        max_tokens=op.max_tokens, temperature=op.temperature, seed=op.seed, stop=tuple(op.stop), frequency_penalty=op.frequency_penalty
    )
    if op.chat:
        messages = ((ChatMessage("system", op.system),) if op.system else ()) + (ChatMessage("user", prompt),)
        return GenerationRequest(request_id=request_id, sampling=sampling, messages=messages)
    return GenerationRequest(request_id=request_id, sampling=sampling, prompt=prompt)


async def generate_items(op: s.Generate, items: list[Any], models: ModelClient, request_id: str) -> list[Any]:
    out = []
    for n, item in enumerate(items):
        text = await models.generate(op.model, generation_request(op, item, f"{request_id}-{n}"), op.chat)
        out.append({**_as_record(item, op.field), op.output: text})
    return out


async def model_apply(stage: PhysicalStage, items: list[Any], models: ModelClient, collections: CollectionStore, to_thread: Callable[..., Any], request_id: str) -> list[Any]:
    op = stage.ops[0]
    if isinstance(op, s.Embed):
        return await embed_items(op, items, models)
    if isinstance(op, s.Retrieve):
        return await retrieve_items(op, items, models, collections, to_thread)
    if isinstance(op, s.Rerank):
        return await rerank_items(op, items, models)
    if isinstance(op, s.Generate):
        return await generate_items(op, items, models, request_id)
    raise AssertionError(f"not a model operator: {s.op_of(op)}")


# ----------------------------------------------------------------------------- writes and sinks


def model_of_vectors(stage_index: int, stages: list[PhysicalStage]) -> str:
    """The embedding model whose vectors reach a collection write (recorded with the collection)."""
    for st in reversed(stages[:stage_index]):
        for op in st.ops:
            if isinstance(op, s.Embed):
                return op.model
    return ""


def write_collection(op: s.Index, items: list[Any], collections: CollectionStore, model: str) -> int:
    ids, vectors, texts, metadata = [], [], [], []
    for item in items:
        if not isinstance(item, dict) or "id" not in item:
            raise ItemError(op.name or s.op_of(op), item_key(item), "collection writes need items with an \"id\"")
        if op.vector_field not in item:
            raise ItemError(op.name or s.op_of(op), item_key(item), f"no field {op.vector_field!r}: put an embed stage before {s.op_of(op)}")
        ids.append(str(item["id"]))
        vectors.append(item[op.vector_field])
        texts.append(str(item.get(op.text_field, "")))
        metadata.append({k: v for k, v in item.items() if k not in ("id", op.vector_field, op.text_field)})
    if not ids:
        return 0
    return collections.get(op.collection, create=True).upsert(ids, vectors, texts, metadata, model)


def strip(item: Any, exclude: list[str]) -> Any:
    return {k: v for k, v in item.items() if k not in exclude} if isinstance(item, dict) else item


class JsonlWriter:
    """Appends items as JSON lines; truncates the file when opened (a retried job rewrites it)."""

    def __init__(self, path: str, exclude: list[str], limit: int | None = None):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.exclude = exclude
        self.limit = limit
        self.written = 0

    def write(self, items: list[Any]) -> None:
        for item in items:
            if self.limit is not None and self.written >= self.limit:
                return
            self.file.write(json.dumps(strip(item, self.exclude), default=str, ensure_ascii=False) + "\n")
            self.written += 1
        self.file.flush()

    def close(self) -> None:
        self.file.close()
