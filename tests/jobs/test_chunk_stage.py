"""The job's chunk stage: a packet chunked in one call of the compiled splitter gives what one
call per item gives; a bad item fails (or is skipped) alone; "markdown" separators."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

from sage_daemon.jobs import operators as ops
from sage_daemon.jobs import spec as s
from sage_daemon.jobs.spec import PipelineSpecError, spec_from_dict

REPO = Path(__file__).resolve().parents[2]


def docs() -> list[dict[str, str]]:
    return [{"id": p.name, "text": p.read_text()} for p in sorted((REPO / "docs").glob("*.md"))] + [{"id": "README.md", "text": (REPO / "README.md").read_text()}]


@pytest.mark.parametrize("separators", [None, "markdown", ["\n\n", " "]])
def test_a_packet_chunked_at_once_equals_one_item_at_a_time(separators: object) -> None:
    op = ops.ChunkOp(s.Chunk(size=500, overlap=50, separators=separators))  # type: ignore[arg-type]
    items = docs() + [{"id": "empty", "text": ""}]
    together = op.many(items)
    assert together == [op(item) for item in items]
    assert all(piece["text"] == item["text"][piece["offset"] : piece["offset"] + len(piece["text"])] for item, pieces in zip(items, together) for piece in pieces)  # type: ignore[union-attr]


def test_markdown_separators_are_langchains_markdown_splitter() -> None:
    op = ops.ChunkOp(s.Chunk(size=800, overlap=100, separators="markdown"))
    splitter = RecursiveCharacterTextSplitter.from_language(Language.MARKDOWN, chunk_size=800, chunk_overlap=100)
    for item in docs():
        assert [p["text"] for p in op(item)] == splitter.split_text(item["text"])


def test_a_bad_item_fails_alone_in_a_packet() -> None:
    op = ops.ChunkOp(s.Chunk(size=100, overlap=10))
    out = op.many([{"id": "a", "text": "x " * 200}, {"id": "b", "text": 42}, {"id": "c", "text": "y"}])
    assert isinstance(out[1], ValueError) and "field 'text'" in str(out[1])
    assert [p["id"] for p in out[2]] == ["c#0"] and len(out[0]) > 1  # type: ignore[union-attr,arg-type]


def test_separators_field_is_checked() -> None:
    with pytest.raises(PipelineSpecError, match="separators"):
        spec_from_dict({"stages": [{"op": "from_items", "items": []}, {"op": "chunk", "separators": "html"}]})
