"""The two doors beside chat completions: OpenAI's Responses API (`/v1/responses`) and
Anthropic's Messages API (`/v1/messages`). Same control plane, engines and scheduling as chat
completions: each route decodes its body, translates it to a `GenerationPlan`
(http/responses.py, http/anthropic.py: I/O-free), and runs it through `http/generation.py` with
the API's own `Renderer`. Errors on /v1/messages are in Anthropic's shape (app.error_response).

Stored responses (`store: true`, OpenAI's default) live in SQLite in the state dir
(http/response_store.py), visible only to the API key that made them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from sage_daemon.engines.base import ChatMessage
from sage_daemon.http import anthropic as a
from sage_daemon.http import responses as r
from sage_daemon.http.errors import ApiError, from_exception
from sage_daemon.http.generation import EventStream
from sage_daemon.http.response_store import ResponseStore
from sage_daemon.http.translate import request_meta
from sage_daemon.services import Services

__all__ = ["MESSAGES_PREFIX", "api_key_of", "register"]

MESSAGES_PREFIX = "/v1/messages"


def api_key_of(headers: Any) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, or Anthropic's `x-api-key`."""
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    key = headers.get("x-api-key")
    return key.strip() if key else None


def _owner(headers: Any) -> str:
    """Whose stored responses these are: a fingerprint of the API key ("" with keys off)."""
    key = api_key_of(headers)
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else ""


def resolve_model(services: Services, name: str) -> str:
    """A configured model's name, through `http.model_aliases` (exact names first, then patterns)."""
    aliases = services.config.http.model_aliases
    if name in aliases:
        return aliases[name]
    if any(m.id == name for m in services.control.list_models()):
        return name
    for pattern, target in aliases.items():
        if fnmatch.fnmatchcase(name, pattern):
            return target
    return name  # unknown: the plane's 404 names the configured models


# -- Anthropic Messages ---------------------------------------------------------------------


class _MessagesStream:
    def __init__(self, stream: a.MessageStream):
        self._stream = stream
        self.start, self.feed, self.end = stream.start, stream.feed, stream.end

    def error(self, api: ApiError) -> bytes:
        return self._stream.error(api.status, api.message)


class MessagesRenderer:
    def __init__(self, request_id: str, model: str):
        self.id = a.message_id(request_id)
        self.model = model

    def new_reply(self) -> a.MessageReply:
        return a.MessageReply(self.id, self.model)

    def reply(self, collector: a.MessageReply) -> object:
        return collector.reply()

    def new_stream(self) -> EventStream:
        return _MessagesStream(a.MessageStream(self.id, self.model))

    async def finished(self, done: Any) -> None:
        return None


# -- OpenAI Responses -------------------------------------------------------------------------


class ResponsesRenderer:
    """Shapes a Response and stores it (with the conversation so far) when `store` is true."""

    def __init__(self, req: r.ResponsesRequest, history: tuple[ChatMessage, ...], store: _Store, owner: str):
        self.req = req
        self.history = history
        self.store = store
        self.owner = owner
        self.id = r.new_response_id()
        self.created_at = int(time.time())
        self.echo = r.response_echo(req)
        self._final: r.Response | None = None

    def new_reply(self) -> r.ResponseReply:
        return r.ResponseReply(id=self.id, model=self.req.model, created_at=self.created_at, echo=self.echo, logprobs=r.wants_logprobs(self.req))

    def reply(self, collector: r.ResponseReply) -> object:
        self._final = collector.reply()
        return self._final

    def new_stream(self) -> r.ResponseStream:
        return r.ResponseStream(id=self.id, model=self.req.model, created_at=self.created_at, echo=self.echo, logprobs=r.wants_logprobs(self.req))

    async def finished(self, done: r.ResponseReply | r.ResponseStream) -> None:
        if self.req.store is False:
            return
        response = done.response() if isinstance(done, r.ResponseStream) else self._final
        if response is None:
            return
        conversation = r.stored_conversation(self.req, self.history, done)
        await self.store.put(response.id, self.owner, msgspec.json.encode(response), conversation)


class _Store:
    """The response store, opened at first use, used from trio through worker threads."""

    def __init__(self, services: Services):
        self.services = services
        self._store: ResponseStore | None = None
        self._lock = trio.Lock()

    async def _open(self) -> ResponseStore:
        async with self._lock:
            if self._store is None:
                http = self.services.config.http
                path = Path(self.services.paths.state_dir) / "responses.sqlite3"
                self._store = await trio.to_thread.run_sync(lambda: ResponseStore(path, http.responses_ttl_s, http.responses_max_rows))
            return self._store

    async def put(self, id: str, owner: str, response: bytes, conversation: list[ChatMessage]) -> None:  # noqa: A002
        store = await self._open()
        await trio.to_thread.run_sync(lambda: store.put(id, owner, response, conversation))

    async def get(self, id: str, owner: str) -> tuple[bytes, tuple[ChatMessage, ...]] | None:  # noqa: A002
        store = await self._open()
        return await trio.to_thread.run_sync(lambda: store.get(id, owner))

    async def delete(self, id: str, owner: str) -> bool:  # noqa: A002
        store = await self._open()
        return await trio.to_thread.run_sync(lambda: store.delete(id, owner))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, f"no response with id {response_id!r} (stored responses expire, and each API key sees only its own)", code="not_found", param="response_id")


# -- routes -----------------------------------------------------------------------------------


def register(app: QuartTrio, services: Services, run: Callable[..., Awaitable[Response]], decode: Callable[[type], Awaitable[Any]]) -> None:
    """The routes of both doors. `run(plan, renderer)` runs a generation plan into a reply;
    `decode(kind)` reads the body as a msgspec Struct (app.py's)."""
    store = _Store(services)

    @app.after_serving
    async def _close_store() -> None:
        store.close()

    @app.post(MESSAGES_PREFIX)
    async def messages() -> Response:
        req: a.MessagesRequest = await decode(a.MessagesRequest)
        model = resolve_model(services, req.model)
        meta = request_meta(request.headers, g.request_id, a.body_metadata(req))
        return await run(a.messages_plan(req, meta, model), MessagesRenderer(g.request_id, req.model))

    @app.post(MESSAGES_PREFIX + "/count_tokens")
    async def count_tokens() -> Response:
        req: a.CountTokensRequest = await decode(a.CountTokensRequest)
        model = resolve_model(services, req.model)
        meta = request_meta(request.headers, g.request_id, None)
        try:
            tokens = await services.control.count_prompt_tokens(model, a.count_tokens_messages(req).request(g.request_id), meta)
        except Exception as exc:
            api = from_exception(exc, param_hint="messages")
            if api is None:
                raise
            raise api from None
        return Response(msgspec.json.encode(a.CountTokensReply(tokens)), content_type="application/json")

    @app.post("/v1/responses")
    async def create_response() -> Response:
        req: r.ResponsesRequest = await decode(r.ResponsesRequest)
        req = msgspec.structs.replace(req, model=resolve_model(services, req.model))
        owner = _owner(request.headers)
        history: tuple[ChatMessage, ...] = ()
        if req.previous_response_id:
            found = await store.get(req.previous_response_id, owner)
            if found is None:
                raise _not_found(req.previous_response_id)
            history = found[1]
        meta = request_meta(request.headers, g.request_id, req.metadata)
        return await run(r.responses_plan(req, meta, history), ResponsesRenderer(req, history, store, owner))

    @app.get("/v1/responses/<response_id>")
    async def get_response(response_id: str) -> Response:
        found = await store.get(response_id, _owner(request.headers))
        if found is None:
            raise _not_found(response_id)
        return Response(found[0], content_type="application/json")

    @app.delete("/v1/responses/<response_id>")
    async def delete_response(response_id: str) -> Response:
        if not await store.delete(response_id, _owner(request.headers)):
            raise _not_found(response_id)
        return Response(msgspec.json.encode(r.ResponseDeleted(response_id)), content_type="application/json")

