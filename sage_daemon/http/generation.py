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
from typing import Any

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


class Generation:
    """The generations of one `GenerationPlan`; see the module docstring for its lifetime."""

    def __init__(self, control: ControlPlaneAPI, nursery: trio.Nursery | None, lifecycle: Lifecycle, plan: GenerationPlan, request_id: str):
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

    def _shape(self) -> dict[str, Any]:
        plan = self.plan
        return {"id": self.id, "model": plan.model, "created": self.created, "n": len(plan.requests), "include_usage": plan.include_usage, "prompt_of": plan.prompt_of, "logprobs": plan.logprobs}

    async def reply(self) -> msgspec.Struct:
        """The whole reply of a request that did not ask to stream."""
        collector = (ChatReply if self.plan.kind == "chat" else CompletionReply)(**self._shape())
        while (item := await self._next_ok()) is not None:
            collector.feed(*item)
        return collector.reply()

    async def events(self) -> AsyncGenerator[bytes, None]:
        """The SSE bytes of a streamed reply. An error after the first byte can no longer be a
        status: it is an error event, then [DONE]."""
        stream = (ChatStream if self.plan.kind == "chat" else CompletionStream)(**self._shape())
        yield stream.start()
        try:
            while (item := await self._next_ok()) is not None:
                out = stream.feed(*item)
                if out:
                    yield out
        except ApiError as api:
            log(logger, logging.WARNING, "generation failed mid-stream", request_id=self.request_id, status=api.status, error=api.message)
            yield stream.error(api.body())
            return
        except Exception as exc:
            logger.error("internal error mid-stream", exc_info=exc, extra={"fields": {"request_id": self.request_id}})
            yield stream.error(internal_error(self.request_id).body())
            return
        yield stream.end()


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
