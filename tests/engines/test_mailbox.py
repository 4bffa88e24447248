"""ChunkMailbox (engines/mailbox.py): one chunk waits at most; what arrives while the consumer is
away is merged into it, every token once and in order; the consumer's leaving drops the rest."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from sage_daemon.engines.base import GenerationChunk, TokenLogprob, ToolCallDelta
from sage_daemon.engines.mailbox import ChunkMailbox, merge_chunks


def token(i: int, **kw: object) -> GenerationChunk:
    lp = (TokenLogprob(f"t{i}", (120,), -0.1 * i),)
    return GenerationChunk(text=f"<{i}>", token_ids=(i,), completion_tokens=i + 1, prompt_tokens=7, logprobs=lp, **kw)  # type: ignore[arg-type]


def test_merging_keeps_every_token_in_order_and_the_later_counts() -> None:
    merged = merge_chunks(token(0), merge_chunks(token(1), token(2, finish_reason="length")))
    assert merged.text == "<0><1><2>" and merged.token_ids == (0, 1, 2)
    assert [e.token for e in merged.logprobs] == ["t0", "t1", "t2"]
    assert (merged.completion_tokens, merged.prompt_tokens, merged.finish_reason) == (3, 7, "length")
    call = ToolCallDelta(index=0, id="c", name="f", arguments="{")
    parsed = merge_chunks(GenerationChunk(reasoning="a", tool_calls=(call,)), GenerationChunk(reasoning="b", error="boom", finish_reason="error"))
    assert (parsed.reasoning, parsed.tool_calls, parsed.error) == ("ab", (call,), "boom")


async def test_a_waiting_consumer_gets_each_chunk_as_it_comes() -> None:
    box = ChunkMailbox()
    got: list[GenerationChunk | None] = []

    async def consume() -> None:
        while True:
            chunk = await box.get()
            got.append(chunk)
            if chunk is None:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        for i in range(3):
            await trio.testing.wait_all_tasks_blocked()
            assert box.put(token(i))
        await trio.testing.wait_all_tasks_blocked()
        box.close()
    assert [c.token_ids if c else None for c in got] == [(0,), (1,), (2,), None]
    assert box.merged == 0


async def test_what_arrives_while_the_consumer_lags_comes_as_one_chunk() -> None:
    box = ChunkMailbox()
    for i in range(5):
        assert box.put(token(i))
    box.put(token(5, finish_reason="stop"))
    box.close()
    assert not box.put(token(6))  # nothing after the close
    first = await box.get()
    assert first is not None and first.token_ids == tuple(range(6)) and first.finish_reason == "stop"
    assert first.text == "".join(f"<{i}>" for i in range(6)) and box.merged == 5
    assert await box.get() is None and await box.get() is None


async def test_after_the_consumer_leaves_chunks_are_dropped() -> None:
    box = ChunkMailbox()
    box.put(token(0))
    box.leave()
    assert not box.put(token(1))
    box.close()
    assert await box.get() is None


async def test_a_cancelled_wait_leaves_the_mailbox_usable() -> None:
    box = ChunkMailbox()
    with trio.move_on_after(0.05) as scope:
        await box.get()
    assert scope.cancelled_caught
    box.put(token(0))
    chunk = await box.get()
    assert chunk is not None and chunk.token_ids == (0,)


async def test_a_ready_chunk_is_still_a_checkpoint() -> None:
    box = ChunkMailbox()
    box.put(token(0))
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await box.get()
    chunk = await box.get()  # not lost by the cancelled call
    assert chunk is not None and chunk.token_ids == (0,)


async def test_two_consumers_at_once_is_an_error() -> None:
    box = ChunkMailbox()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.get)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await box.get()
        box.close()
