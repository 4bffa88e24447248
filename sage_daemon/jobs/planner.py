"""The planner: a declared chain of operators → physical stages an executor runs.

- checks the graph before anything runs: one source and it comes first, a sink at the end
  (a sink in the middle would leave the stages after it unreachable), known models of the
  right kind, user functions that import, templates that parse, hints some node can meet;
- fuses adjacent cheap item-wise operators (map, flat_map, filter, chunk, prompt) with the same
  parallelism and error policy into one stage (one thread hop per packet, not per operator);
- puts a batching boundary in front of every model stage (embedding batches of `batch_size`,
  the generation fan-out = concurrent requests) and in front of collection writes;
- expands parallelism (workers per stage) and routes by key after `key_by`;
- asks the NodeSelector where each stage runs, keeping its reason.
"""

from __future__ import annotations

import importlib
import string
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import msgspec

from sage_daemon.core.errors import PermissionDeniedError
from sage_daemon.jobs import spec as s
from sage_daemon.jobs.access import MODULES_HINT, module_allowed
from sage_daemon.jobs.selector import Decision, NodeSelector, PlacementError, ResourceHints

CHEAP_OPS = frozenset({"map", "flat_map", "filter", "chunk", "prompt"})
StageKind = Literal["source", "cpu", "model", "write", "sink"]
DEFAULT_EMBED_PARALLELISM = 2  # one batch in the engine, the next one queued behind it
MAX_GENERATE_FANOUT = 8


class ModelFacts(msgspec.Struct, frozen=True):
    name: str
    kind: str  # llm | embedding | rerank
    parallel: int = 1


@dataclass
class PhysicalStage:
    index: int
    name: str
    kind: StageKind
    ops: list[s._Stage]
    parallelism: int
    on_error: str
    batch_size: int = 0  # items handed to one call (a batching boundary); 0 = packets as they come
    partition: s.KeyBy | None = None  # items with the same key go to the same worker
    partition_fn: Callable[[], Callable[[Any], Any]] | None = None  # key_by(fn=...)
    hints: ResourceHints = ResourceHints()
    placement: Decision | None = None
    functions: dict[int, Callable[[], Callable[[Any], Any]]] = field(default_factory=dict)  # op index -> per-worker factory

    @property
    def ops_label(self) -> str:
        return "+".join(s.op_of(op) for op in self.ops)


@dataclass
class Plan:
    name: str
    priority: str
    on_error: str
    strategy: str
    base_dir: str
    stages: list[PhysicalStage]
    spec: s.PipelineSpec
    notes: list[str] = field(default_factory=list)

    @property
    def models(self) -> set[str]:
        used = {op.model for st in self.stages for op in st.ops if isinstance(op, (s.Embed, s.Generate, s.Rerank)) or (isinstance(op, s.Retrieve) and op.model)}
        return used | {op.rerank_model for st in self.stages for op in st.ops if isinstance(op, s.Retrieve) and op.rerank_model}

    @property
    def collections_written(self) -> set[str]:
        return {op.collection for st in self.stages for op in st.ops if isinstance(op, s.Index)}


def _fail(index: int, stage: s._Stage, field_name: str | None, what: str) -> s.PipelineSpecError:
    where = f"stage {index + 1} ({s.op_of(stage)}{', ' + repr(stage.name) if stage.name else ''})"
    return s.PipelineSpecError(f"{where}: " + (f"field {field_name}: " if field_name else "") + what, param=field_name)


def _defined_in(target: Any) -> str:
    """The module a function, class or object's class was defined in."""
    if isinstance(target, types.ModuleType):
        return target.__name__
    owner = target if isinstance(target, type) or callable(target) and hasattr(target, "__module__") else type(target)
    return getattr(owner, "__module__", None) or type(target).__module__


def resolve_function(ref: Any, allowed_modules: tuple[str, ...] | None = None) -> Callable[[], Callable[[Any], Any]]:
    """A factory giving each worker its function. Classes with execute() are instantiated per
    worker; objects with execute() and plain callables are shared. Raises ValueError.

    `allowed_modules` (a user peer's job): the module named must be in the list before it is
    imported, and what the name reaches must be defined there too: `allowed:os.system` or a
    re-exported `from os import system` would otherwise lead out of the allow-list. Raises
    PermissionDeniedError. None: any importable function (an admin's job)."""
    target = ref
    if isinstance(ref, str):
        module_name, sep, attr = ref.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(f"{ref!r} is not \"module:attr\"")
        if allowed_modules is not None and not module_allowed(module_name, allowed_modules):
            raise PermissionDeniedError(f"fn {ref!r}: module {module_name!r} is not in [jobs].allowed_function_modules; {MODULES_HINT}")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
        target = module
        for part in attr.split("."):
            if not hasattr(target, part):
                raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
            target = getattr(target, part)
            if allowed_modules is not None and not module_allowed(_defined_in(target), allowed_modules):
                raise PermissionDeniedError(
                    f"fn {ref!r} leads to {_defined_in(target)}" + ("" if isinstance(target, types.ModuleType) else f".{getattr(target, '__qualname__', part)}") + ", "
                    f"outside [jobs].allowed_function_modules; {MODULES_HINT}"
                )
    elif allowed_modules is not None:
        raise PermissionDeniedError(f"fn {ref!r}: a user peer names functions as \"module:function\"; {MODULES_HINT}")
    if isinstance(target, type):
        if not callable(getattr(target, "execute", None)):
            raise ValueError(f"class {target.__qualname__} has no execute() method")
        cls = target
        return lambda: cls().execute
    if callable(getattr(target, "execute", None)):
        return lambda: target.execute
    if callable(target):
        return lambda: target
    raise ValueError(f"{ref!r} is neither callable nor has an execute() method")


def _check_stage(index: int, stage: s._Stage, models: dict[str, ModelFacts]) -> None:
    def model_of_kind(name: str, *kinds: str, field: str = "model") -> None:
        facts = models.get(name)
        if facts is None:
            raise _fail(index, stage, field, f"no model {name!r} in the pool (configured: {', '.join(sorted(models)) or 'none'})")
        if facts.kind not in kinds:
            needs = " or ".join(f"{'an' if k[0] in 'ael' else 'a'} {k}" for k in kinds)
            raise _fail(index, stage, field, f"model {name!r} is {'an' if facts.kind[0] in 'ael' else 'a'} {facts.kind} model; this operator needs {needs} model")

    if isinstance(stage, s.Embed):
        model_of_kind(stage.model, "embedding")
    elif isinstance(stage, s.Rerank):
        model_of_kind(stage.model, "rerank", "embedding")  # a cross-encoder, or a bi-encoder's cosine
    elif isinstance(stage, s.Retrieve):
        if stage.model:
            model_of_kind(stage.model, "embedding")
        if stage.rerank_model:
            model_of_kind(stage.rerank_model, "rerank", "embedding", field="rerank_model")
    elif isinstance(stage, s.Generate):
        model_of_kind(stage.model, "llm")
    elif isinstance(stage, s.Chunk) and stage.overlap >= stage.size:
        raise _fail(index, stage, "overlap", f"must be smaller than size ({stage.overlap} >= {stage.size})")
    elif isinstance(stage, s.Prompt):
        try:
            list(string.Formatter().parse(stage.template))
        except ValueError as exc:
            raise _fail(index, stage, "template", f"not a valid template: {exc}") from None
    elif isinstance(stage, s.KeyBy) and (stage.field is None) == (stage.fn is None or stage.fn == ""):
        raise _fail(index, stage, "field", "give exactly one of field or fn")


def _resolve_functions(index: int, stage: s._Stage, allowed_modules: tuple[str, ...] | None) -> Callable[[], Callable[[Any], Any]] | None:
    fn = getattr(stage, "fn", None)
    if fn is None or fn == "":
        if isinstance(stage, (s.Map, s.FlatMap, s.Filter)):
            raise _fail(index, stage, "fn", "is required")
        return None
    try:
        return resolve_function(fn, allowed_modules)
    except PermissionDeniedError as exc:
        where = f"stage {index + 1} ({s.op_of(stage)}{', ' + repr(stage.name) if stage.name else ''})"
        raise PermissionDeniedError(f"{where}: {exc.message}", param="fn") from None
    except ValueError as exc:
        raise _fail(index, stage, "fn", str(exc)) from None


def _hints(stage: s._Stage) -> ResourceHints:
    return ResourceHints(stage.cpus, stage.gpus, s.parse_memory(stage.memory))


def compile_plan(
    spec: s.PipelineSpec, models: dict[str, ModelFacts], selector: NodeSelector | None = None, reserved_interactive_slots: int = 1,
    allowed_modules: tuple[str, ...] | None = None,
) -> Plan:
    """Check and compile a declaration. Raises PipelineSpecError naming the stage and field, or
    PermissionDeniedError for a function outside `allowed_modules` (None: any function)."""
    stages = spec.stages
    for index, stage in enumerate(stages):
        op = s.op_of(stage)
        if op in s.SOURCES and index != 0:
            raise _fail(index, stage, "op", f"a second source; a pipeline is one chain with one source, and it is stage 1 ({s.op_of(stages[0])})")
        if op in s.SINKS and index != len(stages) - 1:
            raise _fail(index, stage, "op", f"a sink before the end: stages {index + 2}..{len(stages)} would never receive an item")
    if s.op_of(stages[0]) not in s.SOURCES:
        raise _fail(0, stages[0], "op", f"the first stage must be a source ({', '.join(sorted(s.SOURCES))})")
    if len(stages) < 2 or s.op_of(stages[-1]) not in s.SINKS:
        raise _fail(len(stages) - 1, stages[-1], "op", f"the pipeline must end with a sink ({', '.join(sorted(s.SINKS))})")

    functions: dict[int, Callable[[], Callable[[Any], Any]]] = {}
    for index, stage in enumerate(stages):
        _check_stage(index, stage, models)
        factory = _resolve_functions(index, stage, allowed_modules)
        if factory is not None:
            functions[index] = factory

    physical: list[PhysicalStage] = []
    pending_key: s.KeyBy | None = None
    pending_key_fn: Callable[[], Callable[[Any], Any]] | None = None
    names: dict[str, int] = {}

    def stage_name(stage: s._Stage) -> str:
        base = stage.name or s.op_of(stage)
        names[base] = names.get(base, 0) + 1
        return base if names[base] == 1 else f"{base}-{names[base]}"

    def add(kind: StageKind, stage: s._Stage, index: int, parallelism: int, batch_size: int = 0) -> None:
        nonlocal pending_key, pending_key_fn
        physical.append(
            PhysicalStage(
                index=len(physical), name=stage_name(stage), kind=kind, ops=[stage], parallelism=parallelism,
                on_error=stage.on_error or spec.on_error, batch_size=batch_size, partition=pending_key, hints=_hints(stage),
                functions={0: functions[index]} if index in functions else {}, partition_fn=pending_key_fn,
            )
        )
        pending_key, pending_key_fn = None, None

    for index, stage in enumerate(stages):
        op = s.op_of(stage)
        if isinstance(stage, s.KeyBy):
            if pending_key is not None:
                raise _fail(index, stage, "op", "two key_by in a row; the second would replace the first")
            pending_key = stage
            pending_key_fn = functions.get(index)
            continue
        last = physical[-1] if physical else None
        if (
            op in CHEAP_OPS and last is not None and last.kind == "cpu" and all(s.op_of(o) in CHEAP_OPS for o in last.ops)
            and pending_key is None and (stage.parallelism or 1) == last.parallelism and (stage.on_error or spec.on_error) == last.on_error
            and not stage.name and _hints(stage) == ResourceHints()
        ):
            if index in functions:
                last.functions[len(last.ops)] = functions[index]
            last.ops.append(stage)
            continue
        if op in s.SOURCES:
            add("source", stage, index, 1)
        elif op in CHEAP_OPS:
            add("cpu", stage, index, stage.parallelism or 1)
        elif op == "batch":
            add("cpu", stage, index, 1)  # stateful: one worker keeps the open batch
        elif isinstance(stage, s.Embed):
            add("model", stage, index, stage.parallelism or DEFAULT_EMBED_PARALLELISM, stage.batch_size)
        elif isinstance(stage, (s.Retrieve, s.Rerank)):
            add("model", stage, index, stage.parallelism or 1, stage.batch_size)
        elif isinstance(stage, s.Generate):
            facts = models[stage.model]
            fanout = stage.parallelism or max(1, min(MAX_GENERATE_FANOUT, facts.parallel - reserved_interactive_slots))
            add("model", stage, index, fanout, 1)
        elif isinstance(stage, s.ToCollection):  # before Index: a ToCollection is an Index
            add("sink", stage, index, 1, stage.batch_size)
        elif isinstance(stage, s.Index):
            add("write", stage, index, 1, stage.batch_size)  # one writer per collection
        else:
            add("sink", stage, index, 1, 64)
        if op in s.SINKS or op == "index":
            if physical[-1].partition is not None or (stage.parallelism or 1) != 1:
                physical[-1].parallelism = 1  # writers stay single: ordering and idempotence by key

    plan = Plan(spec.name, spec.priority, spec.on_error, spec.strategy, spec.base_dir, physical, spec)
    if selector is not None:
        for placed in physical:
            try:
                placed.placement = selector.select(placed.name, placed.hints, placed.parallelism)
            except PlacementError as exc:
                first = cast(s.Stage, placed.ops[0])  # an op of this spec's own stages
                raise _fail(stages.index(first), first, "cpus" if placed.hints.cpus else "gpus" if placed.hints.gpus else "memory", str(exc)) from None
    fused = [st for st in physical if len(st.ops) > 1]
    if fused:
        plan.notes.append("fused: " + ", ".join(f"{st.name} ({st.ops_label})" for st in fused))
    return plan
