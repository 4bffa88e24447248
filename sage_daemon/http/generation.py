"""One chat or completions request's generations, from the control plane to the reply's bytes.

`Generation` is an async context manager. Entering it counts the request as in flight (the
drain waits for it), starts the choices and waits for the first chunk, so that a typed error
before any output is the HTTP status of the reply; leaving it closes the choices (their queue
places and engine slots are freed at once) and stops the count, whatever the exit: a reply
sent, an error, a cancelled request.

A plain reply is assembled inside the block (`reply()`, by the I/O-free collectors of
http/sse.py). A streamed one outlives the route: `respond` hands the entered generation to an
`SSEBody`, and from then on the body leaves it when the stream ends, fails or the client goes
away (Quart closes a body it has started sending; `DoorHTTPConnection` in http/app.py closes
one that never started).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Protocol

import msgspec
import trio
from quart import Response

from sage_daemon.control.api import ControlPlaneAPI, EngineUnavailableError
from sage_daemon.core.lifecycle import Lifecycle
from sage_daemon.core.logging import log
from sage_daemon.engines.base import GenerationChunk
from sage_daemon.http.choices import Choices, Item, open_choices
from sage_daemon.http.errors import ApiError, from_exception
from sage_daemon.http.sse import ChatReply, ChatStream, CompletionReply, CompletionStream
from sage_daemon.http.translate import GenerationPlan

logger = logging.getLogger("sage.http")

CLOSE_TIMEOUT_S = 5.0  # closing the control-plane streams is prompt; this only bounds a bug


def _failure(chunk: GenerationChunk) -> EngineUnavailableError | None:
    """An engine that reports a failure in a chunk instead of raising: a 503 with Retry-After."""
    if chunk.error or chunk.finish_reason == "error":
        return EngineUnavailableError(f"the engine failed: {chunk.error or 'unknown error'}")
    return None


def internal_error(request_id: str) -> ApiError:
    return ApiError(500, f"internal server error (request id {request_id}); the daemon's log has the details", code="internal_error")


class ReplyCollector(Protocol):
    def feed(self, index: int, chunk: GenerationChunk) -> None: ...


class EventStream(Protocol):
    def start(self) -> bytes: ...
    def feed(self, index: int, chunk: GenerationChunk) -> bytes: ...
    def end(self) -> bytes: ...
    def error(self, api: ApiError) -> bytes: ...


class Renderer(Protocol):
    """How an API shapes the chunks of a generation: a plain reply, or an event stream; and what
    it does once either is complete (the Responses API stores it). Chat and completions use
    `OpenAIRenderer`; /v1/responses and /v1/messages bring their own (http/doors.py)."""

    def new_reply(self) -> ReplyCollector: ...
    def reply(self, collector: Any) -> object: ...
    def new_stream(self) -> EventStream: ...
    async def finished(self, done: Any) -> None: ...


class _ErrorBodyStream:
    """An OpenAI stream whose error() takes the ApiError (ChatStream's takes its body)."""

    def __init__(self, stream: ChatStream | CompletionStream):
        self._stream = stream
        self.start, self.feed, self.end = stream.start, stream.feed, stream.end

    def error(self, api: ApiError) -> bytes:
        return self._stream.error(api.body())


class OpenAIRenderer:
    """Chat completions and completions (http/sse.py)."""

    def __init__(self, generation: Generation):
        plan = generation.plan
        self._chat = plan.kind == "chat"
        self._shape = {"id": generation.id, "model": plan.model, "created": generation.created, "n": len(plan.requests), "include_usage": plan.include_usage, "prompt_of": plan.prompt_of, "logprobs": plan.logprobs}

    def new_reply(self) -> ChatReply | CompletionReply:
        return (ChatReply if self._chat else CompletionReply)(**self._shape)

    def reply(self, collector: ChatReply | CompletionReply) -> object:
        return collector.reply()

    def new_stream(self) -> EventStream:
        return _ErrorBodyStream((ChatStream if self._chat else CompletionStream)(**self._shape))

    async def finished(self, done: Any) -> None:
        return None


class Generation:
    """The generations of one `GenerationPlan`; see the module docstring for its lifetime."""

    def __init__(
        self, control: ControlPlaneAPI, nursery: trio.Nursery | None, lifecycle: Lifecycle, plan: GenerationPlan, request_id: str, renderer: Renderer | None = None
    ):
        self.control = control
        self.nursery = nursery
        self.lifecycle = lifecycle
        self.plan = plan
        self.request_id = request_id
        self.created = int(time.time())
        self.id = ("chatcmpl-" if plan.kind == "chat" else "cmpl-") + request_id.removeprefix("req-")[:40]
        self._choices: Choices | None = None
        self._first: Item | None = None
        self._exit: AsyncExitStack | None = None
        self.renderer: Renderer = renderer or OpenAIRenderer(self)

    # -- the context manager ---------------------------------------------------------------

    async def __aenter__(self) -> Generation:
        async with AsyncExitStack() as stack:
            stack.enter_context(self.lifecycle.track())
            stack.push_async_callback(self._close_choices)
            plan = self.plan
            try:
                self._choices = await open_choices(self.control, self.nursery, plan.model, plan.kind, plan.requests, plan.metas)
            except Exception as exc:
                raise self._translate(exc) from None
            self._first = await self._next()
            self._exit = stack.pop_all()  # entered: __aexit__ / aclose undo it from here
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the choices and stop counting the request; idempotent, safe when cancelled."""
        exit_stack, self._exit = self._exit, None
        if exit_stack is not None:
            await exit_stack.aclose()

    async def _close_choices(self) -> None:
        if self._choices is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._choices.aclose()

    # -- chunks ------------------------------------------------------------------------------

    def _translate(self, exc: Exception) -> Exception:
        api = from_exception(exc, param_hint=self.plan.param_hint)
        return exc if api is None else api

    async def _next(self) -> Item | None:
        assert self._choices is not None
        try:
            return await self._choices.next()
        except Exception as exc:
            raise self._translate(exc) from None

    async def _next_ok(self) -> Item | None:
        """The next (choice, chunk), the one read on entering first; None after the last. A
        chunk that reports a failure raises it."""
        item: Item | None
        if self._first is not None:
            item, self._first = self._first, None
        else:
            item = await self._next()
        if item is not None:
            failure = _failure(item[1])
            if failure is not None:
                raise self._translate(failure)
        return item

    # -- replies -----------------------------------------------------------------------------

    async def reply(self) -> object:
        """The whole reply of a request that did not ask to stream."""
        collector = self.renderer.new_reply()
        while (item := await self._next_ok()) is not None:
            collector.feed(*item)
        reply = self.renderer.reply(collector)
        await self.renderer.finished(collector)
        return reply

    async def events(self) -> AsyncGenerator[bytes, None]:
        """The SSE bytes of a streamed reply. An error after the first byte can no longer be a
        status: it is an error event, then [DONE]."""
        stream = self.renderer.new_stream()
        start = stream.start()
        if start:
            yield start
        try:
            while (item := await self._next_ok()) is not None:
                out = stream.feed(*item)
                if out:
                    yield out
        except ApiError as api:
            log(logger, logging.WARNING, "generation failed mid-stream", request_id=self.request_id, status=api.status, error=api.message)
            yield stream.error(api)
            return
        except Exception as exc:
            logger.error("internal error mid-stream", exc_info=exc, extra={"fields": {"request_id": self.request_id}})
            yield stream.error(internal_error(self.request_id))
            return
        tail = stream.end()
        with trio.CancelScope(shield=True):  # stored (Responses) before the client sees the end
            await self.renderer.finished(stream)
        yield tail


class SSEBody:
    """A streamed reply's body: the events of an entered `Generation`, which it leaves when it
    is closed (Quart closes a body after sending it, or when the send is cancelled). Closing it
    twice, or before it started, is fine."""

    def __init__(self, generation: Generation):
        self.generation = generation
        self._events = generation.events()

    def __aiter__(self) -> SSEBody:
        return self

    async def __anext__(self) -> bytes:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        try:
            with trio.CancelScope(shield=True):
                await self._events.aclose()
        finally:
            await self.generation.aclose()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def respond(generation: Generation, bodies: list[SSEBody]) -> Response:
    """Run `generation` into a reply: JSON when the plan did not ask to stream, else SSE. A
    streamed body is also appended to `bodies` (the connection's list: it closes what is left)."""
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(generation)
        if not generation.plan.stream:
            return Response(msgspec.json.encode(await generation.reply()), status=200, content_type="application/json")
        body = SSEBody(generation)
        bodies.append(body)
        stack.pop_all()  # the body leaves the generation from now on
    return Response(body, status=200, content_type="text/event-stream", headers=SSE_HEADERS)
