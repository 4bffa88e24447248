"""The hot routes as plain ASGI: `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings`
without Quart's request and response objects (issue 23).

`LeanDoor` wraps the Quart app (`create_app`) and is what hypercorn serves. A POST to a hot route
in the common shape (a JSON content type, a Content-Length within `http.max_body_bytes`, no CORS
`Origin` while CORS is configured) is answered here; everything else, and every other route, goes
to Quart unchanged. The rules are the app's own, called from the same places: the request id,
the key check and the body decoding of http/rules.py, the drain's 503, http/translate.py's
plans, http/generation.py's `Generation` (the drain count, the first chunk before the status, the
SSE bytes of http/sse.py), http/errors.py's translation and the same 500 for anything else.

What Quart did per request and this path does not: a werkzeug `Headers` and `Request`, the
before/after hooks' context locals, a `Response` object and its header building, a body wrapper
per streamed reply. What it keeps: a task that watches for `http.disconnect` and cancels the
request (so a client that goes away frees its queue place or engine slot at once), and the
request body read whole before any answer (hypercorn closes a connection whose response ended
before its request body did).

A streamed reply is written as the chunks come: each write carries every event that is ready
(the engine hands a lagging consumer its tokens merged: engines/mailbox.py `ChunkMailbox`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import msgspec
import trio

from sage_daemon.http import schemas as s
from sage_daemon.http.auth import KeyRing
from sage_daemon.http.errors import ApiError, from_exception, shutting_down
from sage_daemon.http.generation import SSE_HEADERS, Generation, internal_error
from sage_daemon.http.rules import authorization, decode_body, embeddings_reply, request_id
from sage_daemon.http.translate import chat_plan, completion_plan, request_meta
from sage_daemon.services import Services

logger = logging.getLogger("sage.http")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")] + [(k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()]


class LeanHeaders:
    """A request's headers as `.get(name)` (any case; the first value, as werkzeug's), decoded as latin-1."""

    __slots__ = ("_map",)

    def __init__(self, raw: list[tuple[bytes, bytes]]):
        found: dict[str, str] = {}
        for name, value in raw:
            found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        self._map = found

    def get(self, key: str, default: Any = None) -> Any:
        return self._map.get(key.lower(), default)


class _Reply:
    """What has gone out of one request's reply (an error can be a status only before the start)."""

    __slots__ = ("send", "request_id", "started")

    def __init__(self, send: Send, rid: str):
        self.send = send
        self.request_id = rid
        self.started = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers + [(b"x-request-id", self.request_id.encode())]})

    async def whole(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _JSON) -> None:
        await self.start(status, headers + [(b"content-length", str(len(body)).encode())])
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def error(self, api: ApiError) -> None:
        extra = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in api.headers.items()]
        await self.whole(api.status, api.encode(), _JSON + extra)


class LeanDoor:
    """ASGI: the hot routes here, the rest to `app` (the Quart app of http/app.py)."""

    def __init__(self, app: Any, services: Services):
        self.app = app
        self.services = services
        self.keyring = KeyRing(services)
        self.routes: dict[str, Callable[[_Reply, LeanHeaders, bytes], Awaitable[None]]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
        }

    def __getattr__(self, name: str) -> Any:  # the Quart app's attributes (nursery, config, ...)
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.routes.get(scope["path"])
            if route is not None:
                headers = self._lean_headers(scope)
                if headers is not None:
                    await self._serve(route, headers, receive, send)
                    return
        await self.app(scope, receive, send)

    def _lean_headers(self, scope: Scope) -> LeanHeaders | None:
        """The headers when this request takes the lean path; None sends it to Quart (a body of
        unknown or too large a length, another content type, CORS: Quart answers those)."""
        headers = LeanHeaders(scope["headers"])
        http = self.services.config.http
        if (headers.get("content-type") or "").split(";", 1)[0].strip().lower() != "application/json":
            return None
        length = headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > http.max_body_bytes or headers.get("transfer-encoding") is not None:
            return None
        if http.cors_origins and headers.get("origin"):
            return None
        return headers

    async def _serve(self, route: Callable[[_Reply, LeanHeaders, bytes], Awaitable[None]], headers: LeanHeaders, receive: Receive, send: Send) -> None:
        reply = _Reply(send, request_id(headers.get("x-request-id")))
        body = b""
        while True:  # the whole body in before any answer (see the module docstring)
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            try:
                self.keyring.check(authorization(headers))
                if not self.services.lifecycle.accepting:
                    raise shutting_down()  # a keep-alive connection opened before the drain
                await route(reply, headers, body)
            except Exception as exc:  # noqa: BLE001 - every error is OpenAI's shape, as app.py's handlers
                if reply.started:
                    raise
                api = exc if isinstance(exc, ApiError) else from_exception(exc)
                if api is None:
                    logger.error("internal error", exc_info=exc, extra={"fields": {"request_id": reply.request_id, "path": "lean"}})
                    api = internal_error(reply.request_id)
                await reply.error(api)
            nursery.cancel_scope.cancel()

    # -- routes ----------------------------------------------------------------------------

    async def _chat(self, reply: _Reply, headers: LeanHeaders, body: bytes) -> None:
        req: s.ChatCompletionRequest = decode_body(body, s.ChatCompletionRequest)
        await self._generate(reply, chat_plan(req, request_meta(headers, reply.request_id, req.metadata)))

    async def _completions(self, reply: _Reply, headers: LeanHeaders, body: bytes) -> None:
        req: s.CompletionRequest = decode_body(body, s.CompletionRequest)
        await self._generate(reply, completion_plan(req, request_meta(headers, reply.request_id, req.metadata)))

    async def _embeddings(self, reply: _Reply, headers: LeanHeaders, body: bytes) -> None:
        req: s.EmbeddingRequest = decode_body(body, s.EmbeddingRequest)
        await reply.whole(200, await embeddings_reply(self.services, req, headers, reply.request_id))

    async def _generate(self, reply: _Reply, plan: Any) -> None:
        services = self.services
        generation = Generation(services.control, getattr(self.app, "nursery", None), services.lifecycle, plan, reply.request_id)
        # Left before the reply's last byte goes out, as with Quart: a client that has its answer
        # finds the request no longer counted (the drain, /health).
        async with generation:  # an error before the first chunk is the reply's status
            if not plan.stream:
                out = msgspec.json.encode(await generation.reply())
            else:
                await reply.start(200, _SSE)
                send = reply.send
                async with aclosing(generation.events()) as events:
                    async for event in events:
                        await send({"type": "http.response.body", "body": event, "more_body": True})
        if not plan.stream:
            await reply.whole(200, out)
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def lean_app(app: Any, services: Services) -> LeanDoor:
    """What the daemon serves: the Quart app behind the lean path of the hot routes."""
    return LeanDoor(app, services)
