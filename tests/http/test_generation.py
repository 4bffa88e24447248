"""http/generation.py alone (no HTTP): a Generation is counted in flight exactly while it is
entered, and its control-plane streams are closed on every exit — a reply, an error before the
first chunk, an exception in the block, a streamed body closed before it ever started or
cancelled in the middle. The control plane is the in-test fake (pure logic: scripted streams)."""

from __future__ import annotations

import pytest
import trio

from sage_daemon.control.api import RequestMeta
from sage_daemon.core.lifecycle import Lifecycle
from sage_daemon.core.metrics import Metrics
from sage_daemon.http import schemas as s
from sage_daemon.http.errors import ApiError
from sage_daemon.http.generation import Generation, SSEBody
from sage_daemon.http.translate import GenerationPlan, chat_plan
from tests.http.fakes import FakeControlPlane


def plan(text: str, **fields: object) -> GenerationPlan:
    req = s.ChatCompletionRequest(model="chatty", messages=[s.ChatMessageIn("user", text)], **fields)  # type: ignore[arg-type]
    return chat_plan(req, RequestMeta(request_id="req-1"))


def parts() -> tuple[FakeControlPlane, Lifecycle]:
    return FakeControlPlane(Metrics()), Lifecycle()


async def test_a_plain_reply_is_counted_while_entered_and_closes_its_stream() -> None:
    control, lifecycle = parts()
    async with Generation(control, None, lifecycle, plan("hi"), "req-1") as generation:
        assert lifecycle.in_flight == 1
        reply = await generation.reply()
    assert reply.choices[0].message.content == "Hello world, again!" and reply.usage.completion_tokens == 5
    assert lifecycle.in_flight == 0 and control.running == 0 and control.closed_streams == 1


async def test_a_typed_error_before_the_first_chunk_is_the_reply_and_leaves_nothing_open() -> None:
    control, lifecycle = parts()
    with pytest.raises(ApiError) as error:
        async with Generation(control, None, lifecycle, plan("QUEUE_FULL"), "req-1"):
            raise AssertionError("not entered")
    assert (error.value.status, error.value.code, error.value.headers) == (429, "queue_full", {"Retry-After": "3"})
    assert lifecycle.in_flight == 0


async def test_an_exception_in_the_block_closes_the_stream() -> None:
    control, lifecycle = parts()
    with pytest.raises(KeyError):
        async with Generation(control, None, lifecycle, plan("SLOW"), "req-1"):
            assert control.running == 1
            raise KeyError("a bug in the route")
    assert lifecycle.in_flight == 0 and control.running == 0


async def test_a_streamed_body_closed_before_it_started_leaves_the_generation() -> None:
    # The client went away between the route's return and the first byte: Quart never iterates
    # the body; DoorHTTPConnection closes it, and that must be enough.
    control, lifecycle = parts()
    generation = Generation(control, None, lifecycle, plan("SLOW", stream=True), "req-1")
    await generation.__aenter__()
    body = SSEBody(generation)
    assert lifecycle.in_flight == 1 and control.running == 1
    await body.aclose()
    await body.aclose()  # twice is fine (Quart, then the connection)
    assert lifecycle.in_flight == 0 and control.running == 0


async def test_a_streamed_body_cancelled_mid_stream_leaves_the_generation(nursery: trio.Nursery) -> None:
    control, lifecycle = parts()
    generation = Generation(control, nursery, lifecycle, plan("SLOW", stream=True, n=2), "req-1")
    await generation.__aenter__()
    body = SSEBody(generation)
    seen = []
    with trio.move_on_after(0.3):  # the client disconnects: the send is cancelled
        async for data in body:
            seen.append(data)
    assert seen and seen[0].startswith(b"data: ") and control.running == 2
    with trio.CancelScope() as scope:
        scope.cancel()  # Quart closes the body inside the cancelled scope
        await body.aclose()
    with trio.fail_after(2):
        while control.running:
            await trio.sleep(0.01)
    assert lifecycle.in_flight == 0 and control.closed_streams == 2


async def test_a_streamed_body_ends_with_done_and_leaves_the_generation() -> None:
    control, lifecycle = parts()
    generation = Generation(control, None, lifecycle, plan("hi", stream=True), "req-1")
    await generation.__aenter__()
    body = SSEBody(generation)
    data = b"".join([chunk async for chunk in body])
    await body.aclose()
    assert data.endswith(b"data: [DONE]\n\n") and b"Hello" in data
    assert lifecycle.in_flight == 0 and control.running == 0
