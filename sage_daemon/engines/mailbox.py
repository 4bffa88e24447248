"""One generation's chunks, from an engine's decode thread to the consumer on trio, coalesced.

The decode loop hands every step's chunks to trio in one `run_sync_soon` call; there each goes
into its stream's `ChunkMailbox`. At most one chunk waits in a mailbox: a chunk that arrives
while another still waits is merged into it (`merge_chunks`). A consumer that keeps up gets one
chunk per step, as before; one that lags (a client that reads slowly, so its writer waits on a
full socket; an event loop busy with other streams) gets everything that is ready as ONE chunk,
which the door turns into one SSE event and one write instead of one per token (issue 23). A
mailbox holds one chunk whatever the consumer does, where a channel had to be sized for the
whole generation so that the decode loop never met a full buffer.

Merging keeps every token, in order: texts are joined, token ids and logprobs concatenated, and
the later chunk's counts, finish reason and error win (a mailbox takes nothing after the final
chunk). It runs before the output parser (tool calls, reasoning), which reads text in pieces of
any size.

`put`, `close` and `leave` run on the trio thread only; no lock is needed.
"""

from __future__ import annotations

import trio

from .base import GenerationChunk


def merge_chunks(first: GenerationChunk, later: GenerationChunk) -> GenerationChunk:
    """One chunk holding `first` then `later` (two raw engine chunks of one stream, in order)."""
    return GenerationChunk(
        text=first.text + later.text,
        token_ids=first.token_ids + later.token_ids,
        finish_reason=later.finish_reason,
        prompt_tokens=later.prompt_tokens,
        completion_tokens=later.completion_tokens,
        cached_prompt_tokens=later.cached_prompt_tokens,
        error=later.error,
        logprobs=first.logprobs + later.logprobs,
        reasoning=first.reasoning + later.reasoning,
        tool_calls=first.tool_calls + later.tool_calls,
    )


class ChunkMailbox:
    """A one-chunk mailbox that merges what arrives while its consumer is away (module docstring)."""

    __slots__ = ("_pending", "_closed", "_left", "_waiter", "merged")

    def __init__(self) -> None:
        self._pending: GenerationChunk | None = None
        self._closed = False  # the producer is done: `get` returns None once the mailbox is empty
        self._left = False  # the consumer is gone: what arrives is dropped
        self._waiter: trio.lowlevel.Task | None = None
        self.merged = 0  # chunks that arrived while another waited (for tests and metrics)

    def put(self, chunk: GenerationChunk) -> bool:
        """Hand over a chunk; False when the consumer has left (the chunk is dropped)."""
        if self._left or self._closed:
            return False
        if self._pending is None:
            self._pending = chunk
            self._wake()
        else:
            self._pending = merge_chunks(self._pending, chunk)
            self.merged += 1
        return True

    def close(self) -> None:
        """Nothing more will come; the consumer still gets what waits."""
        self._closed = True
        self._wake()

    def leave(self) -> None:
        """The consumer is gone: drop what waits and whatever comes."""
        self._left = True
        self._pending = None

    def _wake(self) -> None:
        task, self._waiter = self._waiter, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def get(self) -> GenerationChunk | None:
        """Everything that arrived since the last call, as one chunk; None once closed and empty.
        Waits while the mailbox is empty; a checkpoint either way (trio's rule for async calls)."""
        if self._waiter is not None:
            raise trio.BusyResourceError("another task is already waiting on this mailbox")
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._pending is None and not self._closed:
            self._waiter = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        chunk, self._pending = self._pending, None
        return chunk


__all__ = ["ChunkMailbox", "merge_chunks"]
