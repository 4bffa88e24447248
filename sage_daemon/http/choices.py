"""The generations behind one HTTP request, seen as one stream of (choice index, chunk).

One choice (the common case) iterates its control-plane stream in the request's own task, so a
disconnect cancels it directly. Several choices (`n` > 1, or a list of prompts) run as producer
tasks in the app's nursery and are merged through a bounded channel; closing the merge cancels
them. Either way `aclose()` closes every control-plane stream, which frees its queue place or
engine slot at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from sage_daemon.control.api import ControlPlaneAPI, GenerationStreamAPI, RequestKind, RequestMeta
from sage_daemon.engines.base import GenerationChunk, GenerationRequest

Item = tuple[int, GenerationChunk]


class Choices:
    """Abstract: `next()` gives the next (index, chunk) or None once every choice finished."""

    n: int

    async def next(self) -> Item | None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class SingleChoice(Choices):
    n = 1

    def __init__(self, stream: GenerationStreamAPI):
        self.stream = stream
        self.finished = False
        self.closed = False

    async def next(self) -> Item | None:
        if self.finished:
            return None
        try:
            chunk = await self.stream.__anext__()
        except StopAsyncIteration:
            self.finished = True
            # A stream that ended without saying why ended as a stop.
            return 0, GenerationChunk(finish_reason="stop")
        if chunk.finish_reason is not None:
            self.finished = True
        return 0, chunk

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.stream.aclose()


class ManyChoices(Choices):
    def __init__(self, nursery: trio.Nursery, control: ControlPlaneAPI, model: str, kind: RequestKind, requests: Sequence[GenerationRequest], metas: Sequence[RequestMeta]):
        self.n = len(requests)
        self.scope = trio.CancelScope()
        self._send, self._receive = trio.open_memory_channel[tuple[int, GenerationChunk | BaseException | None]](max(4, self.n * 2))
        self.finished = [False] * self.n
        self._nursery = nursery
        self._control = control
        self._model = model
        self._kind = kind
        self._requests = requests
        self._metas = metas
        self.closed = False

    def start(self) -> None:
        self._nursery.start_soon(self._run_all)

    async def _run_all(self) -> None:
        with self.scope:
            async with self._send, trio.open_nursery() as nursery:
                for index, (request, meta) in enumerate(zip(self._requests, self._metas, strict=True)):
                    nursery.start_soon(self._run_one, index, request, meta, self._send.clone())

    async def _run_one(self, index: int, request: GenerationRequest, meta: RequestMeta, send: trio.MemorySendChannel[Any]) -> None:
        async with send:
            stream = None
            try:
                stream = await self._control.generate(self._model, self._kind, request, meta)
                async for chunk in stream:
                    await send.send((index, chunk))
                    if chunk.finish_reason is not None:
                        break
                await send.send((index, None))
            except (trio.Cancelled, trio.BrokenResourceError, trio.ClosedResourceError):
                raise
            except Exception as exc:  # handed to the consumer, which answers with it
                try:
                    await send.send((index, exc))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            finally:
                if stream is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await stream.aclose()

    async def next(self) -> Item | None:
        while not all(self.finished):
            try:
                index, item = await self._receive.receive()
            except trio.EndOfChannel:
                # Every producer is gone: the ones that did not finish ended as stops.
                for index, done in enumerate(self.finished):
                    if not done:
                        self.finished[index] = True
                        return index, GenerationChunk(finish_reason="stop")
                return None
            if self.finished[index]:
                continue
            if isinstance(item, BaseException):
                raise item
            if item is None:
                self.finished[index] = True
                return index, GenerationChunk(finish_reason="stop")
            if item.finish_reason is not None:
                self.finished[index] = True
            return index, item
        return None

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.scope.cancel()
            self._receive.close()


async def open_choices(
    control: ControlPlaneAPI,
    nursery: trio.Nursery | None,
    model: str,
    kind: RequestKind,
    requests: Sequence[GenerationRequest],
    metas: Sequence[RequestMeta],
) -> Choices:
    """Start the generations. One choice: its stream is opened here (typed errors raised before
    any output come out of this call). Several: the producers start in `nursery`."""
    if len(requests) == 1:
        return SingleChoice(await control.generate(model, kind, requests[0], metas[0]))
    if nursery is None:
        raise RuntimeError("several choices need the app's nursery")
    choices = ManyChoices(nursery, control, model, kind, requests, metas)
    choices.start()
    return choices
