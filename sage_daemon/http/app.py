"""The HTTP door: a Quart-Trio app speaking the OpenAI API. This module keeps the app, its hooks,
its error handlers and the route table; each route decodes the body, translates it
(http/translate.py), calls `services.control` (the `ControlPlaneAPI`, nothing else of the
plane) and shapes the reply. Chat and completions run through `http/generation.py`.

Every reply carries `x-request-id`; every error is OpenAI's `{"error": {...}}` (no HTML, no
traceback); `/v1/*` needs a bearer key when keys are configured, and so do the operational
routes (/health, /metrics, /version, /openapi.json) when `http.public_health` is false.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, cast

import msgspec
from quart import Response, g, has_request_context, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import HTTPException

from sage_client._version import __version__
from sage_daemon.http import admin, doors
from sage_daemon.http import schemas as s
from sage_daemon.http.anthropic import error_body as anthropic_error_body
from sage_daemon.http.auth import KeyRing
from sage_daemon.http.errors import ApiError, bad_request, from_exception, shutting_down
from sage_daemon.http.generation import Generation, Renderer, SSEBody, internal_error, respond
from sage_daemon.http.openapi import openapi_document
from sage_daemon.http.rules import authorization, decode_body, embeddings_reply, request_id
from sage_daemon.http.translate import chat_plan, completion_plan, model_out, request_meta
from sage_daemon.services import Services

logger = logging.getLogger("sage.http")

_JSON_TYPES = ("application/json",)
_CORS_ALLOW_HEADERS = "Authorization, x-api-key, anthropic-version, Content-Type, X-Request-Id, X-SAGE-Priority, X-SAGE-Deadline-Ms, OpenAI-Organization, OpenAI-Project"
OPERATIONAL = ("/health", "/metrics", "/openapi.json", "/version")
# Outside /v1 (as llama-server, vLLM and Cohere's SDK call them), behind the keys too.
KEYED = ("/tokenize", "/detokenize", "/rerank", "/v2/rerank")
# Still answered during the drain: they say the daemon is draining instead of refusing.
_DURING_DRAIN = ("/health", "/metrics")
_BODIES = "sage.sse_bodies"  # ASGI scope key: the streamed bodies of this request (see DoorHTTPConnection)


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status=status, content_type="application/json", headers=headers)


def error_response(error: ApiError) -> Response:
    """OpenAI's error shape; Anthropic's on /v1/messages (its clients read only theirs)."""
    if has_request_context() and request.path.startswith(doors.MESSAGES_PREFIX):
        body = msgspec.json.encode(anthropic_error_body(error.status, error.message))
        return Response(body, status=error.status, content_type="application/json", headers=error.headers)
    return Response(error.encode(), status=error.status, content_type="application/json", headers=error.headers)


class DoorHTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's per-request handler, plus one guarantee: a streamed body that Quart never
    started sending (the client went away between the route's return and the first byte) is
    closed too, so its generation frees its engine slot and leaves the drain count. Quart closes
    a body only once it has begun to send it."""

    async def __call__(self, receive: Any, send: Any) -> None:
        try:
            await super().__call__(receive, send)
        finally:
            bodies: list[SSEBody] = cast(dict[str, Any], self.scope).get(_BODIES, [])
            for body in bodies:
                await body.aclose()  # idempotent; shields itself


class SageApp(QuartTrio):
    asgi_http_class = DoorHTTPConnection


async def decode(kind: type) -> Any:
    """The request body as `kind`, or the 4xx that says what is wrong with it."""
    mimetype = request.mimetype
    if mimetype not in _JSON_TYPES:
        raise ApiError(415, f"send the request body as application/json, not {mimetype or 'no content type'}", code="unsupported_media_type", param="Content-Type")
    return decode_body(await request.get_data(as_text=False), kind)  # http/rules.py (shared with http/lean.py)


def create_app(services: Services) -> QuartTrio:
    app = SageApp("sage_daemon")
    app.config["MAX_CONTENT_LENGTH"] = services.config.http.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    keyring = KeyRing(services)
    _hooks(app, services, keyring)
    _error_handlers(app, services)
    run = _generation_routes(app, services)
    doors.register(app, services, run, decode)
    _token_routes(app, services)
    _rerank_routes(app, services)
    _other_routes(app, services, keyring)
    admin.register(app, services, keyring)  # the web dashboard (/, /ui, /sage/v1/...): http/admin.py
    return app


def _hooks(app: QuartTrio, services: Services, keyring: KeyRing) -> None:
    @app.before_request
    async def _before() -> Response | None:
        g.request_id = request_id(request.headers.get("x-request-id", ""))
        # The whole body in before any answer (an error included), whatever the method: hypercorn
        # closes a connection whose response ended before its request body did, and that close
        # can be cut short, leaving a keep-alive client's next request unanswered on an open socket.
        await request.get_data(as_text=False)
        http = services.config.http
        if request.method == "OPTIONS" and http.cors_origins and request.headers.get("Origin") and request.headers.get("Access-Control-Request-Method"):
            return Response(b"", status=204)  # the CORS headers are added after the request
        path = request.path
        if path.startswith("/v1/") or path == "/v1" or path in KEYED or (not http.public_health and path in OPERATIONAL):
            keyring.check(authorization(request.headers))
        if not services.lifecycle.accepting and path not in _DURING_DRAIN:
            # A request on a keep-alive connection opened before the drain: answered, not left hanging.
            raise shutting_down()
        return None

    @app.after_request
    async def _after(response: Response) -> Response:
        request_id = getattr(g, "request_id", None) or f"req-{uuid.uuid4().hex}"
        response.headers["x-request-id"] = request_id
        origins = services.config.http.cors_origins
        origin = request.headers.get("Origin")
        if origins and origin and (origin in origins or "*" in origins):
            response.headers["Access-Control-Allow-Origin"] = origin if "*" not in origins else "*"
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Expose-Headers"] = "x-request-id, Retry-After"
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                response.headers["Access-Control-Allow-Headers"] = request.headers.get("Access-Control-Request-Headers") or _CORS_ALLOW_HEADERS
                response.headers["Access-Control-Max-Age"] = "600"
        return response


def _error_handlers(app: QuartTrio, services: Services) -> None:
    """Every error is OpenAI's shape; typed errors say their own status (http/errors.py)."""

    @app.errorhandler(ApiError)
    async def _api_error(error: ApiError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        headers = {}
        if status == 404:
            api = ApiError(404, f"no route {request.method} {request.path}", code="unknown_route")
        elif status == 405:
            allowed = sorted(getattr(error, "valid_methods", None) or [])
            headers["Allow"] = ", ".join(allowed)
            api = ApiError(405, f"method {request.method} is not allowed on {request.path}; allowed: {', '.join(allowed) or 'none'}", code="method_not_allowed")
        elif status == 413:
            limit = services.config.http.max_body_bytes
            api = ApiError(413, f"the request body is larger than the limit of {limit} bytes (http.max_body_bytes)", code="request_too_large")
            # The body was not read: close the connection, or a client still sending it waits on
            # a server that no longer reads (clients like httpx read the answer after the write fails).
            headers["Connection"] = "close"
        elif status >= 500:
            return await _unexpected(error)
        else:
            api = ApiError(status, error.description or error.name, code=error.name.lower().replace(" ", "_"))
        api.headers.update(headers)
        return error_response(api)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        api = from_exception(error)
        if api is not None:
            return error_response(api)
        request_id = getattr(g, "request_id", "-")
        logger.error("internal error", exc_info=error, extra={"fields": {"request_id": request_id, "path": request.path}})
        return error_response(internal_error(request_id))


def _generation_routes(app: QuartTrio, services: Services) -> Any:
    """Chat completions, completions, embeddings; returns `run(plan, renderer)` for the other doors."""

    async def run(plan: Any, renderer: Renderer | None = None) -> Response:
        generation = Generation(services.control, getattr(app, "nursery", None), services.lifecycle, plan, g.request_id, renderer)
        bodies: list[SSEBody] = cast(dict[str, Any], request.scope).setdefault(_BODIES, [])
        return await respond(generation, bodies)

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        req: s.ChatCompletionRequest = await decode(s.ChatCompletionRequest)
        return await run(chat_plan(req, request_meta(request.headers, g.request_id, req.metadata)))

    @app.post("/v1/completions")
    async def completions() -> Response:
        req: s.CompletionRequest = await decode(s.CompletionRequest)
        return await run(completion_plan(req, request_meta(request.headers, g.request_id, req.metadata)))

    @app.post("/v1/embeddings")
    async def embeddings() -> Response:
        req: s.EmbeddingRequest = await decode(s.EmbeddingRequest)
        return Response(await embeddings_reply(services, req, request.headers, g.request_id), status=200, content_type="application/json")

    return run


def _token_routes(app: QuartTrio, services: Services) -> None:
    """POST /tokenize and /detokenize for models whose tokenizer is in the daemon."""

    async def plane_call(call: Any) -> Any:
        try:
            return await call
        except Exception as exc:
            api = from_exception(exc, param_hint="model")
            if api is None:
                raise
            raise api from None

    @app.post("/tokenize")
    async def tokenize() -> Response:
        req: s.TokenizeRequest = await decode(s.TokenizeRequest)
        if (req.content is None) == (req.prompt is None):
            raise bad_request("give the text as content (llama-server) or prompt (vLLM), one of them", param="content")
        add_special = req.add_special if req.add_special is not None else req.add_special_tokens if req.add_special_tokens is not None else False
        meta = request_meta(request.headers, g.request_id, None)
        text = req.content if req.content is not None else req.prompt or ""
        out = await plane_call(services.control.tokenize(req.model, text, add_special, req.with_pieces, meta))
        tokens: list[int] | list[s.TokenPiece] = out.tokens
        if out.pieces is not None:
            tokens = [s.TokenPiece(t, _piece(p)) for t, p in zip(out.tokens, out.pieces)]
        return json_response(s.TokenizeReply(tokens, len(out.tokens), out.max_model_len))

    @app.post("/detokenize")
    async def detokenize() -> Response:
        req: s.DetokenizeRequest = await decode(s.DetokenizeRequest)
        text = await plane_call(services.control.detokenize(req.model, req.tokens, request_meta(request.headers, g.request_id, None)))
        return json_response(s.DetokenizeReply(text, text))


def _rerank_routes(app: QuartTrio, services: Services) -> None:
    """POST /v1/rerank (and /rerank, /v2/rerank): one query against many documents."""

    async def rerank() -> Response:
        req: s.RerankRequest = await decode(s.RerankRequest)
        texts = [d if isinstance(d, str) else d.text for d in req.documents]
        meta = request_meta(request.headers, g.request_id, None)
        try:
            if services.control.get_model(req.model).kind == "llm":
                raise bad_request(f"model {req.model!r} is a language model, not a reranker; use a rerank (or embedding) model", param="model")
            with services.lifecycle.track():
                result = await services.control.rerank(req.model, req.query, texts, meta)
        except Exception as exc:
            api = from_exception(exc, param_hint="documents")
            if api is None:
                raise
            raise api from None
        order = sorted(range(len(texts)), key=lambda i: (-result.scores[i], i))[: req.top_n or len(texts)]
        keep = req.return_documents is not False
        results = [s.RerankResultItem(i, result.scores[i], s.RerankDocument(texts[i]) if keep else None) for i in order]
        usage = s.RerankUsage(result.prompt_tokens, result.prompt_tokens)
        return json_response(s.RerankReply(f"rerank-{g.request_id}", req.model, results, usage))

    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        app.post(path, endpoint=f"rerank{path.replace('/', '_')}")(rerank)


def _piece(raw: bytes) -> str | list[int]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


def _other_routes(app: QuartTrio, services: Services, keyring: KeyRing) -> None:
    openapi_cache: dict[tuple[bool, bool], bytes] = {}

    @app.get("/v1/models")
    async def list_models() -> Response:
        return json_response(s.ModelList([model_out(m) for m in services.control.list_models()]))

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> Response:
        try:
            info = services.control.get_model(model_id)
        except Exception as exc:
            api = from_exception(exc, param_hint="model")
            if api is None:
                raise
            if api.status == 404:
                api.param = "model"
            raise api from None
        return json_response(model_out(info))

    @app.get("/health")
    async def health() -> Response:
        state = services.lifecycle.state
        reasons = [] if state == "serving" else [f"daemon is {state}"]
        models: list[s.HealthModel] = []
        try:
            report = services.control.health()
        except Exception as exc:  # a health check that cannot tell says no
            logger.error("health check failed", exc_info=exc)
            reasons.append(f"health check failed: {type(exc).__name__}")
        else:
            if not report.ok:
                reasons += report.reasons or ["control plane is not ok"]
            models = [s.HealthModel(m.id, m.kind, m.backend, m.state, m.reason) for m in report.models]
        body = s.Health("ok" if not reasons else "unavailable", reasons, __version__, state, models)
        return json_response(body, 200 if not reasons else 503)

    @app.get("/version")
    async def version() -> Response:
        return json_response({"version": __version__})

    @app.get("/metrics")
    async def metrics_route() -> Response:
        data, content_type = services.metrics.render()
        return Response(data, status=200, content_type=content_type)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        # Keys can come and go (SIGHUP, the key file): the document follows them.
        variant = (bool(keyring.keys()), services.config.http.public_health)
        if variant not in openapi_cache:
            openapi_cache[variant] = msgspec.json.encode(openapi_document(__version__, keys=variant[0], public_health=variant[1]))
        return Response(openapi_cache[variant], status=200, content_type="application/json")
