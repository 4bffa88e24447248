"""The declaration of a pipeline: msgspec Structs shared by the Python API and TOML files.

A pipeline is a list of stages. The first is a source, the last a sink; each stage names its
operator in `op` and carries that operator's arguments, plus the common `parallelism`,
resource hints (`cpus`, `gpus`, `memory`) and an optional `on_error` override. A bad file gets
one `PipelineSpecError` naming the stage, the field and, where it can be found, the line.
"""

from __future__ import annotations

import re
import tomllib
import typing
from typing import Annotated, Any, Literal

import msgspec

from sage_daemon.core.errors import InvalidRequestError

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
# "fail" stops the job at the first error; "skip" drops the item (counted, logged);
# "retry:N" tries the item N more times, then fails the job.
OnError = Annotated[str, msgspec.Meta(pattern=r"^(fail|skip|retry:[1-9][0-9]?)$")]


class PipelineSpecError(InvalidRequestError):
    """A declaration that cannot run: one line naming the stage and the field."""

    code = "invalid_pipeline"


class _Stage(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="op"):
    name: str = ""  # shown in progress and errors; default: the op, numbered when repeated
    parallelism: Positive | None = None  # None: the planner decides (1, or the fan-out of model stages)
    cpus: NonNegative = 0.0  # resource hints for the node selector
    gpus: NonNegative = 0.0
    memory: int | str = 0  # bytes, or "512MB" / "2GiB"
    on_error: OnError | None = None  # overrides the pipeline's on_error for this stage


# ----------------------------------------------------------------------------- sources


class FromItems(_Stage, tag="from_items"):
    items: list[Any]


class FromFiles(_Stage, tag="from_files"):
    """One item per txt/md file ({"id": path relative to the base dir, "text", "path"}), one per
    line of a jsonl file. Globs (`**` recursive) are relative to the pipeline file's folder."""

    paths: Annotated[list[str], msgspec.Meta(min_length=1)]
    encoding: str = "utf-8"


class FromJsonl(_Stage, tag="from_jsonl"):
    path: str
    id_field: str = "id"


# ----------------------------------------------------------------------------- operators


class Map(_Stage, tag="map"):
    fn: Any  # "module:attr" in files; a callable or an object with execute() in Python


class FlatMap(_Stage, tag="flat_map"):
    fn: Any


class Filter(_Stage, tag="filter"):
    fn: Any


class Batch(_Stage, tag="batch"):
    size: Positive


class KeyBy(_Stage, tag="key_by"):
    """Items with the same key go to the same worker of the next stage."""

    field: str | None = None
    fn: Any = None


class Chunk(_Stage, tag="chunk"):
    size: Annotated[int, msgspec.Meta(ge=16)] = 800
    overlap: Annotated[int, msgspec.Meta(ge=0)] = 100
    field: str = "text"
    # Literal separators, tried in order (LangChain's RecursiveCharacterTextSplitter); "markdown":
    # headings, code fences and rules first (LangChain's Language.MARKDOWN); None: paragraphs,
    # lines, words, characters.
    separators: list[str] | Literal["markdown"] | None = None


class Embed(_Stage, tag="embed"):
    model: str = "minilm"
    field: str = "text"
    output: str = "vector"
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64


class Index(_Stage, tag="index"):
    """Upsert items (by their "id") with their vectors into a collection; passes items on."""

    collection: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    vector_field: str = "vector"
    text_field: str = "text"
    batch_size: Positive = 256


class Retrieve(_Stage, tag="retrieve"):
    """The k best items of a collection for each item's `field`: by dense similarity ("dense"),
    by BM25 over the stored texts ("bm25": no embedding model needed) or both fused by weighted
    reciprocal rank fusion ("hybrid", `weights` = [dense, bm25]). With `rerank_model`, the best
    `rerank_candidates` are retrieved, scored against the query by that model (a reranker, or
    an embedding model by cosine) and the best k kept, each with its `rerank_score`."""

    collection: str
    field: str = "question"
    output: str = "contexts"
    k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 4
    mode: Literal["dense", "bm25", "hybrid"] = "dense"
    weights: Annotated[list[NonNegative], msgspec.Meta(min_length=2, max_length=2)] = msgspec.field(default_factory=lambda: [1.0, 1.0])  # [dense, bm25], for "hybrid"
    # Deprecated alias of mode = "hybrid" (older pipeline files); true sets mode to "hybrid".
    hybrid: bool = False
    model: str = ""  # "" = the model the collection was indexed with
    rerank_model: str = ""  # "" = no rerank step
    rerank_candidates: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 20  # retrieved for the reranker, which keeps k
    batch_size: Positive = 32

    def __post_init__(self) -> None:
        if self.hybrid:
            if self.mode == "bm25":
                raise ValueError("field hybrid: `hybrid = true` (deprecated: mode = \"hybrid\") contradicts mode = \"bm25\"; give mode alone")
            self.mode = "hybrid"
        if self.mode == "hybrid" and not any(self.weights):
            raise ValueError("field weights: at least one of [dense, bm25] must be > 0")


class Prompt(_Stage, tag="prompt"):
    """`template` is a str.format template over the item's fields, plus {context}: the texts of
    the item's retrieved contexts, numbered, one per paragraph."""

    template: str
    output: str = "prompt"
    contexts_field: str = "contexts"


class Generate(_Stage, tag="generate"):
    model: str = "smollm2"
    field: str = "prompt"
    output: str = "answer"
    chat: bool = True  # send the prompt as a user message (the model's chat template)
    system: str = ""
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=32768)] = 256
    temperature: NonNegative = 0.0
    seed: int | None = 0
    stop: Annotated[list[str], msgspec.Meta(max_length=4)] = []  # the answer ends before any of these
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] = 0.0


class Rerank(_Stage, tag="rerank"):
    """Re-order an item's contexts by the model's relevance score to the query (`ModelClient.rerank`:
    a reranker's, or an embedding model's cosine similarity); keep the best top_n."""

    model: str = "minilm"
    field: str = "question"
    contexts_field: str = "contexts"
    top_n: Positive = 3
    batch_size: Positive = 16


# ----------------------------------------------------------------------------- sinks


class ToJsonl(_Stage, tag="to_jsonl"):
    path: str
    exclude: list[str] = msgspec.field(default_factory=lambda: ["vector"])  # fields left out of each line


class ToCollection(Index, tag="to_collection"):
    pass


class Collect(_Stage, tag="collect"):
    """Results kept with the job (a JSONL file in the state dir), returned by `job.wait`."""

    limit: Positive = 10000
    exclude: list[str] = msgspec.field(default_factory=lambda: ["vector"])


Stage = (
    FromItems | FromFiles | FromJsonl | Map | FlatMap | Filter | Batch | KeyBy | Chunk | Embed | Index | Retrieve | Prompt | Generate | Rerank
    | ToJsonl | ToCollection | Collect
)
STAGE_TYPES: dict[str, type[_Stage]] = {t.__struct_config__.tag: t for t in Stage.__args__}
SOURCES = frozenset({"from_items", "from_files", "from_jsonl"})
SINKS = frozenset({"to_jsonl", "to_collection", "collect"})
MODEL_OPS = frozenset({"embed", "retrieve", "generate", "rerank"})


class PipelineSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = "pipeline"
    on_error: OnError = "fail"
    priority: Literal["critical", "high", "normal", "low", "background"] = "background"
    base_dir: str = ""  # relative paths in stages resolve here ("" = the pipeline file's folder)
    strategy: Literal["balanced", "pack", "spread"] = "balanced"  # the node selector's strategy
    stages: Annotated[list[Stage], msgspec.Meta(min_length=1)]


def op_of(stage: _Stage) -> str:
    return str(stage.__struct_config__.tag)


def parse_memory(value: int | str) -> int:
    """Bytes from 123, "512MB", "2GiB", "1.5G"."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?B?)\s*", value, re.I)
    if not match:
        raise ValueError(f"memory {value!r} is not a size like 512MB or 2GiB")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match[2].upper()]
    return int(float(match[1]) * scale)


# ----------------------------------------------------------------------------- loading

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _stage_line(text: str, index: int, field: str | None) -> int | None:
    """The line of stage `index` (its `[[stages]]` header, or `field =` inside it), 1-based."""
    lines = text.splitlines()
    headers = [n for n, line in enumerate(lines) if re.match(r"^\s*\[\[\s*stages\s*\]\]", line)]
    if index >= len(headers):
        return None
    start = headers[index]
    end = next((n for n in range(start + 1, len(lines)) if re.match(r"^\s*\[", lines[n])), len(lines))
    if field:
        for n in range(start + 1, end):
            if re.match(rf"^\s*{re.escape(field)}\s*=", lines[n]):
                return n + 1
    return start + 1


def _top_line(text: str, field: str) -> int | None:
    for n, line in enumerate(text.splitlines()):
        if re.match(r"^\s*\[", line):
            return None
        if re.match(rf"^\s*{re.escape(field)}\s*=", line):
            return n + 1
    return None


def _literal_choices(struct: type, field: str) -> tuple[Any, ...]:
    """The values a Literal field of a stage accepts (empty when it is not a Literal)."""
    hint = typing.get_type_hints(struct).get(field)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def explain(exc: msgspec.ValidationError, raw: Any, text: str | None = None, label: str = "pipeline") -> PipelineSpecError:
    """msgspec's error as one line: `pipeline.toml:12: stage 2 (chunk): field size: expected ...`."""
    match = _AT.match(str(exc))
    assert match is not None
    what, path = match["what"], match["path"] or ""
    what = what[0].lower() + what[1:]
    field: str | None = None
    unknown = re.match(r"object contains unknown field `([^`]+)`", what)
    if unknown:
        field = unknown[1]
    stage_match = re.match(r"^\.stages\[(\d+)\](?:\.(\w+))?", path)
    line: int | None = None
    if stage_match:
        index = int(stage_match[1])
        field = field or stage_match[2]
        stage_raw = raw["stages"][index] if isinstance(raw, dict) and isinstance(raw.get("stages"), list) and index < len(raw["stages"]) else {}
        op = stage_raw.get("op", "?") if isinstance(stage_raw, dict) else "?"
        where = f"stage {index + 1} ({op})"
        if field == "op" and "invalid value" in what:
            what = f"unknown operator {op!r}; known: {', '.join(sorted(STAGE_TYPES))}"
        elif unknown and op in STAGE_TYPES:
            what = f"unknown field (known: {', '.join(sorted(STAGE_TYPES[op].__struct_fields__))})"
        elif "missing required field `op`" in what:
            what = "no `op`: say which operator this stage is"
        elif field and "invalid enum value" in what and op in STAGE_TYPES:
            choices = _literal_choices(STAGE_TYPES[op], field)
            what += f" (one of: {', '.join(map(repr, choices))})" if choices else ""
        line = _stage_line(text, index, field) if text else None
    else:
        field = field or path.lstrip(".") or None
        where = "pipeline"
        line = _top_line(text, field) if text and field else None
    missing = re.match(r"object missing required field `(\w+)`", what)
    if missing:
        field, what = missing[1], "is required"
    prefix = f"{label}:{line}: " if line else f"{label}: "
    return PipelineSpecError(f"{prefix}{where}: " + (f"field {field}: " if field else "") + what, param=field)


def spec_from_dict(raw: Any, text: str | None = None, label: str = "pipeline") -> PipelineSpec:
    if not isinstance(raw, dict):
        raise PipelineSpecError(f"{label}: a pipeline is a table with `stages`, got {type(raw).__name__}")
    try:
        spec = msgspec.convert(raw, PipelineSpec)
    except msgspec.ValidationError as exc:
        raise explain(exc, raw, text, label) from None
    for index, stage in enumerate(spec.stages):
        try:
            parse_memory(stage.memory)
        except ValueError as exc:
            line = _stage_line(text, index, "memory") if text else None
            raise PipelineSpecError(f"{label}:{line or '?'}: stage {index + 1} ({op_of(stage)}): field memory: {exc}", param="memory") from None
    return spec


def load_toml(text: str, label: str = "pipeline.toml") -> PipelineSpec:
    """Parse and validate a pipeline file's text; PipelineSpecError (one line) when it is wrong."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{label}:{found[1]}: " if found else f"{label}: "
        raise PipelineSpecError(f"{where}not valid TOML: {exc}") from None
    return spec_from_dict(raw, text, label)


def spec_to_builtins(spec: PipelineSpec) -> dict[str, Any]:
    """JSON-safe form for the job store; callables declared in Python become their repr."""

    def enc(value: Any) -> Any:
        return f"<python {getattr(value, '__qualname__', type(value).__name__)}>"

    decoded: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(spec, enc_hook=enc))
    return decoded


def has_python_objects(spec: PipelineSpec) -> bool:
    return any(callable(getattr(s, "fn", None)) or (getattr(s, "fn", None) is not None and not isinstance(getattr(s, "fn"), str)) for s in spec.stages)
