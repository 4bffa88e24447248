"""The Python API, in the style of SAGE's DataStream: an environment makes sources, each
operator returns a new stream, a sink ends it. It builds the same `PipelineSpec` a TOML file
does, so both go through one planner and one executor.

    env = Pipeline("rag", on_error="skip")
    (env.from_files(["docs/*.md"]).chunk(size=800).embed(model="minilm", parallelism=2)
        .to_collection("docs"))
    job_id = await manager.submit(env.spec())

User functions are plain callables, classes with an `execute()` method (instantiated once per
worker), or "module:attr" strings.
"""

from __future__ import annotations

from typing import Any

from sage_daemon.jobs import spec as s


class Pipeline:
    """The environment: pipeline-wide settings and the sources that start a chain."""

    def __init__(self, name: str = "pipeline", *, on_error: str = "fail", priority: str = "background", base_dir: str = "", strategy: str = "balanced"):
        self.name = name
        self.on_error = on_error
        self.priority = priority
        self.base_dir = base_dir
        self.strategy = strategy
        self._chains: list[DataStream] = []

    def _start(self, stage: s._Stage) -> DataStream:
        stream = DataStream(self, [stage])
        self._chains.append(stream)
        return stream

    def from_items(self, items: list[Any], **hints: Any) -> DataStream:
        return self._start(s.FromItems(items=list(items), **hints))

    def from_files(self, paths: list[str] | str, **options: Any) -> DataStream:
        return self._start(s.FromFiles(paths=[paths] if isinstance(paths, str) else list(paths), **options))

    def from_jsonl(self, path: str, **options: Any) -> DataStream:
        return self._start(s.FromJsonl(path=path, **options))

    def spec(self) -> s.PipelineSpec:
        """The declaration, validated. One chain per pipeline."""
        if len(self._chains) != 1:
            raise s.PipelineSpecError(f"pipeline {self.name!r}: has {len(self._chains)} sources; a pipeline is one chain with one source")
        wide = {"name": self.name, "on_error": self.on_error, "priority": self.priority, "base_dir": self.base_dir, "strategy": self.strategy}
        s.spec_from_dict({**wide, "stages": [{"op": "from_items", "items": []}]})  # checks the pipeline-wide fields
        return s.PipelineSpec(**wide, stages=list(self._chains[0].stages))  # type: ignore[arg-type]


class DataStream:
    """A chain under construction. Every method appends a stage and returns a new stream."""

    def __init__(self, env: Pipeline, stages: list[s._Stage]):
        self.env = env
        self.stages = stages

    def _then(self, stage_type: type[s._Stage], **fields: Any) -> DataStream:
        import msgspec

        index = len(self.stages)
        op = stage_type.__struct_config__.tag
        try:
            # Through convert, so Annotated constraints (ge, pattern) are checked as in files.
            stage = msgspec.convert({"op": op, **{k: ("" if _is_object(v) else v) for k, v in fields.items()}}, stage_type)
        except msgspec.ValidationError as exc:
            # Report it as a file would: at the stage's position in the chain.
            located = msgspec.ValidationError(str(exc).replace("at `$", f"at `$.stages[{index}]") if "at `$" in str(exc) else f"{exc} - at `$.stages[{index}]`")
            raise s.explain(located, {"stages": [{}] * index + [{"op": op}]}) from None
        for key, value in fields.items():
            if _is_object(value):
                setattr(stage, key, value)
        self.env._chains[self.env._chains.index(self)] = stream = DataStream(self.env, [*self.stages, stage])
        return stream

    # generic operators
    def map(self, fn: Any, **hints: Any) -> DataStream:
        return self._then(s.Map, fn=fn, **hints)

    def flat_map(self, fn: Any, **hints: Any) -> DataStream:
        return self._then(s.FlatMap, fn=fn, **hints)

    def filter(self, fn: Any, **hints: Any) -> DataStream:
        return self._then(s.Filter, fn=fn, **hints)

    def batch(self, size: int, **hints: Any) -> DataStream:
        return self._then(s.Batch, size=size, **hints)

    def key_by(self, key: Any, **hints: Any) -> DataStream:
        """`key` is a field name or a function of the item."""
        if isinstance(key, str) and ":" not in key:
            return self._then(s.KeyBy, field=key, **hints)
        return self._then(s.KeyBy, fn=key, **hints)

    # AI operators
    def chunk(self, **options: Any) -> DataStream:
        return self._then(s.Chunk, **options)

    def embed(self, **options: Any) -> DataStream:
        return self._then(s.Embed, **options)

    def index(self, collection: str, **options: Any) -> DataStream:
        return self._then(s.Index, collection=collection, **options)

    def retrieve(self, collection: str, **options: Any) -> DataStream:
        return self._then(s.Retrieve, collection=collection, **options)

    def prompt(self, template: str, **options: Any) -> DataStream:
        return self._then(s.Prompt, template=template, **options)

    def generate(self, **options: Any) -> DataStream:
        return self._then(s.Generate, **options)

    def rerank(self, **options: Any) -> DataStream:
        return self._then(s.Rerank, **options)

    # sinks
    def to_jsonl(self, path: str, **options: Any) -> DataStream:
        return self._then(s.ToJsonl, path=path, **options)

    def to_collection(self, collection: str, **options: Any) -> DataStream:
        return self._then(s.ToCollection, collection=collection, **options)

    def collect(self, **options: Any) -> DataStream:
        return self._then(s.Collect, **options)


def _is_object(value: Any) -> bool:
    """A user function given by object (not a "module:attr" string)."""
    return callable(value) or hasattr(value, "execute")
