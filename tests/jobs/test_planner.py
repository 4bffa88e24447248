"""The declaration (TOML and Python), the planner's checks and rewrites, the node selector."""

from __future__ import annotations

import pytest

from sage_client.protocol import GpuInfo, NodeInfo
from sage_daemon.jobs import spec as s
from sage_daemon.jobs.api import Pipeline
from sage_daemon.jobs.planner import ModelFacts, compile_plan
from sage_daemon.jobs.selector import NodeCapacity, NodeSelector, ResourceHints

MODELS = {"minilm": ModelFacts("minilm", "embedding", 1), "smollm2": ModelFacts("smollm2", "llm", 8)}

RAG = """
name = "rag"
[[stages]]
op = "from_items"
items = [{id = "a", text = "hello world"}]
[[stages]]
op = "map"
fn = "tests.jobs.helpers:upper"
[[stages]]
op = "chunk"
size = 100
overlap = 10
[[stages]]
op = "embed"
model = "minilm"
[[stages]]
op = "to_collection"
collection = "docs"
"""


def one_node(cpus: int = 4, gpus: int = 0) -> NodeSelector:
    gpu_list = [GpuInfo(i, "gpu", 8 << 30, 8 << 30) for i in range(gpus)]
    return NodeSelector([NodeCapacity.from_node_info(NodeInfo("host", "cpu", cpus, 16 << 30, 8 << 30, gpu_list, "config", False, False))])


def test_toml_compiles_with_fusion_batching_and_placement() -> None:
    plan = compile_plan(s.load_toml(RAG), MODELS, one_node())
    assert [(st.name, st.kind, st.ops_label) for st in plan.stages] == [
        ("from_items", "source", "from_items"),
        ("map", "cpu", "map+chunk"),  # cheap maps fused
        ("embed", "model", "embed"),
        ("to_collection", "sink", "to_collection"),
    ]
    embed = plan.stages[2]
    assert embed.batch_size == 64 and embed.parallelism == 2  # a batching boundary, one batch queued behind another
    assert all(st.placement is not None and st.placement.node == "host" and "balanced" in st.placement.reason for st in plan.stages)
    assert plan.collections_written == {"docs"} and plan.models == {"minilm"}
    assert any("fused" in note for note in plan.notes)


def test_generate_fans_out_to_the_model_slots_minus_the_reserved_one() -> None:
    spec = Pipeline("ask").from_items(["q"]).prompt("Q: {question}").generate(model="smollm2").collect().env.spec()
    plan = compile_plan(spec, MODELS, one_node(), reserved_interactive_slots=1)
    generate = next(st for st in plan.stages if st.ops_label == "generate")
    assert generate.parallelism == 7 and generate.batch_size == 1


def test_python_api_accepts_callables_and_execute_classes() -> None:
    from tests.jobs.helpers import Suffix, upper

    env = Pipeline("py")
    env.from_items([{"id": "x", "text": "a"}]).map(upper).map(Suffix, parallelism=2).key_by("id").filter(lambda item: True).collect()
    plan = compile_plan(env.spec(), MODELS, one_node())
    assert [st.ops_label for st in plan.stages] == ["from_items", "map", "map", "filter", "collect"]
    assert plan.stages[2].parallelism == 2
    assert plan.stages[3].partition is not None and plan.stages[3].partition.field == "id"
    worker_fn = plan.stages[2].functions[0]()
    assert worker_fn({"text": "a"})["text"] == "a!"
    assert s.has_python_objects(env.spec())


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (RAG.replace('op = "chunk"', 'op = "chunkk"'), "pipeline.toml:10: stage 3 (chunkk): field op: unknown operator 'chunkk'"),
        (RAG.replace("size = 100", "sise = 100"), "pipeline.toml:11: stage 3 (chunk): field sise: unknown field (known:"),
        (RAG.replace("size = 100", "size = 'big'"), "pipeline.toml:11: stage 3 (chunk): field size: expected `int`, got `str`"),
        (RAG.replace('model = "minilm"', 'model = "nope"'), "stage 4 (embed): field model: no model 'nope' in the pool"),
        (RAG.replace('model = "minilm"', 'model = "smollm2"'), "stage 4 (embed): field model: model 'smollm2' is an llm model"),
        (RAG.replace("overlap = 10", "overlap = 200"), "stage 3 (chunk): field overlap: must be smaller than size"),
        (RAG.replace("tests.jobs.helpers:upper", "tests.jobs.helpers:nope"), "stage 2 (map): field fn: module 'tests.jobs.helpers' has no attribute 'nope'"),
        (RAG.replace("tests.jobs.helpers:upper", "upper"), "stage 2 (map): field fn: 'upper' is not \"module:attr\""),
        (RAG.replace('op = "to_collection"', 'op = "index"'), "must end with a sink"),
        (RAG.replace('op = "map"\nfn = "tests.jobs.helpers:upper"', 'op = "collect"'), "a sink before the end"),
        (RAG.replace('op = "map"\nfn = "tests.jobs.helpers:upper"', 'op = "from_items"\nitems = []'), "a second source"),
        (RAG.replace('[[stages]]\nop = "from_items"', '[[stages]]\nop = "map"\nfn = "tests.jobs.helpers:upper"').replace('items = [{id = "a", text = "hello world"}]', ""), "the first stage must be a source"),
        (RAG.replace('name = "rag"', 'name = "rag"\non_error = "sometimes"'), "pipeline.toml:3: pipeline: field on_error:"),
        (RAG.replace("[[stages]]\nop = \"embed\"", "[[stages]]\nop = \"embed\"\nmemory = \"lots\""), "stage 4 (embed): field memory: memory 'lots' is not a size"),
        (RAG.replace("[[stages]]\nop = \"embed\"", "[[stages]]\nop = \"embed\"\ngpus = 1"), "stage 4 (embed): field gpus: stage 'embed' needs cpus=0 gpus=2"),
        ("[[stages]\nop = 1", "pipeline.toml:1: not valid TOML"),
        ('name = "x"', "pipeline: field stages: is required"),
    ],
)
def test_bad_declarations_get_one_line_naming_stage_and_field(toml: str, expected: str) -> None:
    with pytest.raises(s.PipelineSpecError) as info:
        compile_plan(s.load_toml(toml), MODELS, one_node())
    message = str(info.value)
    assert expected in message and "\n" not in message, message


def test_python_api_reports_bad_arguments_like_files() -> None:
    with pytest.raises(s.PipelineSpecError, match=r"stage 2 \(chunk\): field size: expected `int` >= 16"):
        Pipeline().from_items([]).chunk(size=3)


def test_selector_strategies_hints_and_reasons() -> None:
    def nodes() -> list[NodeCapacity]:
        return [NodeCapacity("a", 8, 0, 32 << 30, used_cpus=6), NodeCapacity("b", 8, 1, 32 << 30, used_cpus=2), NodeCapacity("c", 4, 0, 8 << 30)]

    balanced = NodeSelector(nodes(), "balanced")
    assert balanced.select("x", ResourceHints(cpus=1)).node == "c"  # lowest weighted use
    pack = NodeSelector(nodes(), "pack")
    first = pack.select("x", ResourceHints(cpus=1))
    assert first.node == "a" and first.reason.startswith("pack")
    spread = NodeSelector(nodes(), "spread")
    assert [spread.select(f"s{i}", ResourceHints()).node for i in range(3)] == ["c", "b", "a"]  # one stage each, least used first
    gpu = NodeSelector(nodes(), "balanced").select("g", ResourceHints(gpus=1))
    assert gpu.node == "b" and "refused" in gpu.reason and "needs 1" in gpu.reason
    too_big = NodeSelector(nodes(), "balanced")
    with pytest.raises(Exception, match="no node has it"):
        too_big.select("huge", ResourceHints(memory=64 << 30))
