"""The HTTP door: a Quart-Trio app speaking the OpenAI API. Routes translate HTTP into calls on
the services (parse and validate → GenerationRequest/RequestMeta → `services.control` → shape
the reply), nothing more.

Every reply carries `x-request-id`; every error is OpenAI's `{"error": {...}}` (no HTML, no
traceback); `/v1/*` needs a bearer key when keys are configured.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import platform
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import numpy as np
import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from sage_client._version import __version__
from sage_daemon.control.api import ControlPlaneAPI, InvalidRequestError, ModelInfo, Priority, RequestKind, RequestMeta
from sage_daemon.core.logging import log
from sage_daemon.core.metrics import Metrics
from sage_daemon.engines.base import ChatMessage, GenerationChunk, GenerationRequest, SamplingParams, TokenLogprob
from sage_daemon.http import schemas as s
from sage_daemon.http.choices import Choices, open_choices
from sage_daemon.http.errors import ApiError, bad_request, from_decode, from_exception, from_validation, unsupported
from sage_daemon.http.openapi import openapi_document
from sage_daemon.http.sse import ChatStream, CompletionStream, chat_logprobs, completion_logprobs, public_finish_reason
from sage_daemon.services import Services

logger = logging.getLogger("sage.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_JSON_TYPES = ("application/json",)
CHAT_DEFAULT_MAX_TOKENS = 256
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-Id, X-SAGE-Priority, X-SAGE-Deadline-Ms, OpenAI-Organization, OpenAI-Project"


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status=status, content_type="application/json", headers=headers)


def error_response(error: ApiError) -> Response:
    return Response(error.encode(), status=error.status, content_type="application/json", headers=error.headers)


class KeyRing:
    """The API keys in force: `http.api_keys` (SAGE_API_KEY included) plus `http.api_key_file`,
    re-read when the file changes. Both keys can change on SIGHUP, so it asks each time."""

    def __init__(self, services: Services):
        self.services = services
        self._file: tuple[str, float, int] | None = None
        self._file_keys: list[bytes] = []

    def keys(self) -> list[bytes]:
        http = self.services.config.http
        keys = [k.encode() for k in http.api_keys if k]
        if http.api_key_file:
            keys += self._read_file(http.api_key_file)
        return keys

    def _read_file(self, path: str) -> list[bytes]:
        try:
            st = os.stat(path)
            stamp = (path, st.st_mtime, st.st_size)
            if stamp != self._file:
                with open(path, encoding="utf-8") as f:
                    lines = [line.strip() for line in f]
                self._file_keys = [line.encode() for line in lines if line and not line.startswith("#")]
                self._file = stamp
        except OSError as exc:
            # A missing key file must not open the door: refuse every key until it is readable.
            log(logger, logging.ERROR, "cannot read http.api_key_file; refusing /v1 requests", path=path, error=exc.strerror)
            return [b"\0unreadable-key-file\0" + os.urandom(16)]
        return self._file_keys

    def check(self, authorization: str | None) -> None:
        """Raise a 401 unless `authorization` carries a configured key (constant-time compare)."""
        keys = self.keys()
        if not keys:
            return
        given = b""
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() == "bearer":
                given = token.strip().encode()
        ok = False
        for key in keys:  # every key is compared, so timing says nothing about which matched
            ok |= hmac.compare_digest(given, key)
        if not given:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not ok:
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def request_meta(body_metadata: dict[str, str] | None) -> RequestMeta:
    """X-SAGE-Priority (or metadata.priority) and X-SAGE-Deadline-Ms → RequestMeta."""
    priority = Priority.NORMAL
    header = request.headers.get("X-SAGE-Priority")
    if header is not None:
        priority = _priority(header, "X-SAGE-Priority")
    elif body_metadata and "priority" in body_metadata:
        priority = _priority(body_metadata["priority"], "metadata.priority")
    deadline_s = None
    raw = request.headers.get("X-SAGE-Deadline-Ms")
    if raw is not None:
        try:
            deadline_ms = float(raw)
        except ValueError:
            deadline_ms = float("nan")
        if not (0 < deadline_ms <= 86_400_000):  # also refuses nan and inf
            raise bad_request(f"invalid X-SAGE-Deadline-Ms {raw!r}: give milliseconds, a number > 0 and <= 86400000", param="X-SAGE-Deadline-Ms")
        deadline_s = deadline_ms / 1000.0
    return RequestMeta(request_id=g.request_id, priority=priority, deadline_s=deadline_s, caller="http")


def _priority(text: str, where: str) -> Priority:
    try:
        return Priority.parse(text)
    except InvalidRequestError as exc:
        raise bad_request(f"{where}: {exc.message}", param=where) from None


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    return tuple(x for x in items if x)


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's logit_bias ({"token id": bias}, keys checked by the schema) as (id, bias) pairs;
    "7" and "007" are one token (the last one given counts). The engine checks the ids against its vocabulary."""
    if not bias:
        return ()
    return tuple({int(key): value for key, value in bias.items()}.items())


def _chat_messages(messages: list[s.ChatMessageIn]) -> tuple[ChatMessage, ...]:
    out = []
    for i, message in enumerate(messages):
        if isinstance(message.content, str):
            text = message.content
        else:
            parts = []
            for j, part in enumerate(message.content):
                if part.type != "text":
                    raise bad_request(
                        f"content part type {part.type!r} is not supported: this server takes text parts only",
                        param=f"messages[{i}].content[{j}].type",
                    )
                parts.append(part.text)
            text = "\n".join(parts)
        role = "system" if message.role == "developer" else message.role
        out.append(ChatMessage(role=role, content=text))
    return tuple(out)


def _completion_prompts(prompt: str | list[Any]) -> list[str | tuple[int, ...]]:
    """A prompt as OpenAI takes it: a string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(x, int) for x in prompt):
        return [tuple(prompt)]
    if all(isinstance(x, str) for x in prompt):
        return list(prompt)
    if all(isinstance(x, list) for x in prompt):
        return [tuple(x) for x in prompt]
    raise bad_request("prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids, not a mix", param="prompt")


def _embedding_inputs(value: str | list[Any]) -> list[str] | list[list[int]]:
    if isinstance(value, str):
        items: list[Any] = [value]
    elif all(isinstance(x, int) for x in value):
        return [list(value)]
    else:
        items = value
    if all(isinstance(x, str) for x in items):
        for i, text in enumerate(items):
            if not text:
                raise bad_request("input must not contain empty strings", param="input" if isinstance(value, str) else f"input[{i}]")
        return items
    if all(isinstance(x, list) for x in items):
        return items
    raise bad_request("input must be a string, a list of strings, a list of token ids or a list of lists of token ids, not a mix", param="input")


def _model_out(info: ModelInfo) -> s.Model:
    return s.Model(
        id=info.id,
        created=info.created,
        owned_by=info.owned_by,
        kind=info.kind,
        backend=info.backend,
        state=info.state,
        max_model_len=info.n_ctx or None,
        dimensions=info.dimensions or None,
        chat_template=info.chat_template if info.kind == "llm" else None,
    )


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("sage_daemon")
    app.config["MAX_CONTENT_LENGTH"] = services.config.http.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    keyring = KeyRing(services)
    metrics: Metrics = getattr(services, "metrics", None) or Metrics()
    if getattr(services, "metrics", None) is None:
        try:
            services.metrics = metrics  # type: ignore[attr-defined]
        except AttributeError:
            pass
    openapi_bytes = msgspec.json.encode(openapi_document(__version__))

    def control() -> ControlPlaneAPI:
        plane = getattr(services, "control", None)
        if plane is None:
            raise ApiError(503, "the control plane is not running yet", code="engine_unavailable")
        return plane

    def app_nursery() -> trio.Nursery | None:
        return getattr(app, "nursery", None)

    # -- before and after every request ---------------------------------------------------

    @app.before_request
    async def _before() -> Response | None:
        given = request.headers.get("x-request-id", "")
        g.request_id = given if _REQUEST_ID.match(given) else f"req-{uuid.uuid4().hex}"
        if request.method == "POST":
            # The whole body in before any answer (an error included): hypercorn closes a
            # connection whose response ended before its request body did, and that close can be
            # cut short, leaving a keep-alive client's next request unanswered on an open socket.
            await request.get_data(as_text=False)
        origins = services.config.http.cors_origins
        if request.method == "OPTIONS" and origins and request.headers.get("Origin") and request.headers.get("Access-Control-Request-Method"):
            return Response(b"", status=204)  # the CORS headers are added after the request
        path = request.path
        guarded = path.startswith("/v1/") or path == "/v1" or (not services.config.http.public_health and path in ("/health", "/metrics", "/openapi.json"))
        if guarded:
            keyring.check(request.headers.get("Authorization"))
        if path.startswith("/v1/") and request.method == "POST" and not services.lifecycle.accepting:
            raise ApiError(503, "the daemon is shutting down", code="shutting_down", headers={"Retry-After": "5"})
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

    # -- errors: always OpenAI's shape --------------------------------------------------

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
        return error_response(ApiError(500, f"internal server error (request id {request_id}); the daemon's log has the details", code="internal_error"))

    # -- request bodies ----------------------------------------------------------------------

    async def decode(kind: type) -> Any:
        mimetype = request.mimetype
        if mimetype not in _JSON_TYPES:
            raise ApiError(415, f"send the request body as application/json, not {mimetype or 'no content type'}", code="unsupported_media_type", param="Content-Type")
        data = await request.get_data(as_text=False)
        if not data:
            raise ApiError(400, "the request body is empty: send a JSON object", code="invalid_json")
        try:
            return msgspec.json.decode(data, type=kind)
        except msgspec.ValidationError as exc:
            raise from_validation(exc) from None
        except msgspec.DecodeError as exc:
            raise from_decode(exc) from None

    # -- generation (chat and completions) -----------------------------------------------------

    async def run_generation(
        kind: RequestKind,
        model: str,
        requests: list[GenerationRequest],
        metas: list[RequestMeta],
        *,
        stream: bool,
        include_usage: bool,
        prompt_of: list[int],
        param_hint: str,
    ) -> Response:
        created = int(time.time())
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + g.request_id.removeprefix("req-")[:40]
        lifecycle_cm = services.lifecycle.track()
        lifecycle_cm.__enter__()
        handed_over = False
        choices: Choices | None = None
        try:
            try:
                choices = await open_choices(control(), app_nursery(), model, kind, requests, metas)
                first = await choices.next()  # typed errors before any output become the HTTP status
            except Exception as exc:
                api = from_exception(exc, param_hint=param_hint)
                if api is None:
                    raise
                raise api from None
            if first is not None and (first[1].error or first[1].finish_reason == "error"):
                raise ApiError(503, f"the engine failed: {first[1].error or 'unknown error'}", code="engine_error")
            encoder_cls = ChatStream if kind == "chat" else CompletionStream
            want_logprobs = requests[0].sampling.logprobs is not None
            encoder = encoder_cls(id=rid, model=model, created=created, n=len(requests), include_usage=include_usage, prompt_of=prompt_of, logprobs=want_logprobs)
            if stream:
                handed_over = True
                return Response(
                    _sse_body(encoder, choices, first, lifecycle_cm, g.request_id),
                    status=200,
                    content_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            texts = [""] * len(requests)
            logprobs: list[list[TokenLogprob]] = [[] for _ in requests]
            reasons: list[str | None] = [None] * len(requests)
            item = first
            while item is not None:
                index, chunk = item
                if chunk.error or chunk.finish_reason == "error":
                    raise ApiError(503, f"the engine failed: {chunk.error or 'unknown error'}", code="engine_error")
                encoder._count(index, chunk)
                texts[index] += chunk.text
                logprobs[index] += chunk.logprobs
                if chunk.finish_reason is not None:
                    reasons[index] = public_finish_reason(chunk.finish_reason)
                try:
                    item = await choices.next()
                except Exception as exc:
                    api = from_exception(exc, param_hint=param_hint)
                    if api is None:
                        raise
                    raise api from None
            usage = encoder.usage()
            if kind == "chat":
                body: Any = s.ChatCompletion(
                    rid, created, model,
                    [
                        s.ChatChoice(i, s.ChatMessageOut("assistant", texts[i]), reasons[i] or "stop", chat_logprobs(logprobs[i]) if want_logprobs else None)
                        for i in range(len(requests))
                    ],
                    usage,
                )
            else:
                body = s.Completion(
                    rid, created, model,
                    [
                        s.CompletionChoice(i, texts[i], reasons[i] or "stop", completion_logprobs(logprobs[i]) if want_logprobs else None)
                        for i in range(len(requests))
                    ],
                    usage,
                )
            return json_response(body)
        finally:
            if not handed_over:
                if choices is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await choices.aclose()
                lifecycle_cm.__exit__(None, None, None)

    async def _sse_body(
        encoder: ChatStream | CompletionStream, choices: Choices, first: tuple[int, GenerationChunk] | None, lifecycle_cm: Any, request_id: str
    ) -> AsyncIterator[bytes]:
        # Runs after the handler returned, outside the request context: everything it needs is passed in.
        try:
            yield encoder.start()
            item = first
            while item is not None:
                index, chunk = item
                if chunk.error or chunk.finish_reason == "error":
                    log(logger, logging.WARNING, "generation failed mid-stream", request_id=request_id, error=chunk.error or "-")
                    yield encoder.error(ApiError(503, f"the engine failed: {chunk.error or 'unknown error'}", code="engine_error").body())
                    return
                out = encoder.feed(index, chunk)
                if out:
                    yield out
                item = await choices.next()
            yield encoder.end()
        except Exception as exc:
            api = from_exception(exc)
            if api is None:
                logger.error("internal error mid-stream", exc_info=exc, extra={"fields": {"request_id": request_id}})
                api = ApiError(500, f"internal server error (request id {request_id}); the daemon's log has the details", code="internal_error")
            yield encoder.error(api.body())
        finally:
            # Runs on a normal end, an error and a client that went away (cancellation): the
            # control-plane streams are closed even inside a cancelled scope.
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await choices.aclose()
            lifecycle_cm.__exit__(None, None, None)

    def sampling(req: s.ChatCompletionRequest | s.CompletionRequest, max_tokens: int, logprobs: int | None = None) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            min_p=req.min_p or 0.0,
            seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            stop=_stop(req.stop),
            ignore_eos=bool(req.ignore_eos),
            logit_bias=_logit_bias(req.logit_bias),
            logprobs=logprobs,
        )

    def metas_for(meta: RequestMeta, count: int) -> list[RequestMeta]:
        if count == 1:
            return [meta]
        return [msgspec.structs.replace(meta, request_id=f"{meta.request_id}-{i}") for i in range(count)]

    def refuse_common(req: Any) -> None:
        if req.stream_options is not None and not req.stream:
            raise bad_request("stream_options is only allowed when stream is true", param="stream_options")

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        req: s.ChatCompletionRequest = await decode(s.ChatCompletionRequest)
        refuse_common(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
        if req.tools or req.functions:
            raise unsupported("tool calling (tools, functions)", "tools" if req.tools else "functions")
        if req.tool_choice not in (None, "none"):
            raise unsupported("tool_choice", "tool_choice")
        if req.response_format is not None and req.response_format.type != "text":
            raise unsupported(f"response_format {req.response_format.type!r}", "response_format")
        messages = _chat_messages(req.messages)
        meta = request_meta(req.metadata)
        max_tokens = req.max_completion_tokens or req.max_tokens or CHAT_DEFAULT_MAX_TOKENS
        n = req.n or 1
        params = sampling(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
        requests = [
            GenerationRequest(request_id=m.request_id, sampling=params, messages=messages)
            for m in metas_for(meta, n)
        ]
        return await run_generation(
            "chat", req.model, requests, metas_for(meta, n),
            stream=bool(req.stream), include_usage=bool(req.stream_options and req.stream_options.include_usage),
            prompt_of=[0] * n, param_hint="messages",
        )

    @app.post("/v1/completions")
    async def completions() -> Response:
        req: s.CompletionRequest = await decode(s.CompletionRequest)
        refuse_common(req)
        if req.echo:
            raise unsupported("echo", "echo")
        if req.suffix:
            raise unsupported("suffix", "suffix")
        if req.best_of is not None and req.best_of != (req.n or 1):
            raise unsupported("best_of other than n", "best_of")
        prompts = _completion_prompts(req.prompt)
        meta = request_meta(req.metadata)
        n = req.n or 1
        if len(prompts) * n > 64:
            raise bad_request(f"at most 64 choices per request (prompts x n); this one asks for {len(prompts) * n}", param="n")
        params = sampling(req, req.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS, req.logprobs)
        metas = metas_for(meta, len(prompts) * n)
        requests, prompt_of = [], []
        for p_index, prompt in enumerate(prompts):
            for _ in range(n):
                m = metas[len(requests)]
                if isinstance(prompt, str):
                    requests.append(GenerationRequest(request_id=m.request_id, sampling=params, prompt=prompt))
                else:
                    if not prompt:
                        raise bad_request("a prompt of token ids must not be empty", param="prompt")
                    requests.append(GenerationRequest(request_id=m.request_id, sampling=params, prompt_tokens=prompt))
                prompt_of.append(p_index)
        return await run_generation(
            "completion", req.model, requests, metas,
            stream=bool(req.stream), include_usage=bool(req.stream_options and req.stream_options.include_usage),
            prompt_of=prompt_of, param_hint="prompt",
        )

    # -- embeddings --------------------------------------------------------------------------

    @app.post("/v1/embeddings")
    async def embeddings() -> Response:
        req: s.EmbeddingRequest = await decode(s.EmbeddingRequest)
        inputs = _embedding_inputs(req.input)
        meta = request_meta(req.metadata)
        plane = control()
        try:
            info = plane.get_model(req.model)
            if info.kind != "embedding":
                raise bad_request(f"model {req.model!r} is an LLM, not an embedding model", param="model")
            with services.lifecycle.track():
                if req.dimensions is None:
                    result = await plane.embed(req.model, inputs, meta)
                else:  # the plane answers 400 unless the model can truncate (Matryoshka) to that size
                    result = await plane.embed(req.model, inputs, meta, dimensions=req.dimensions)  # type: ignore[call-arg]
        except Exception as exc:
            api = from_exception(exc, param_hint="input")
            if api is None:
                raise
            raise api from None
        data = []
        for index, vector in enumerate(result.vectors):
            if req.encoding_format == "base64":
                value: list[float] | str = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
            else:
                value = vector
            data.append(s.Embedding(index, value))
        return json_response(s.EmbeddingList(data, req.model, s.EmbeddingUsage(result.prompt_tokens, result.prompt_tokens)))

    # -- models ------------------------------------------------------------------------------

    @app.get("/v1/models")
    async def list_models() -> Response:
        return json_response(s.ModelList([_model_out(m) for m in control().list_models()]))

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> Response:
        try:
            info = control().get_model(model_id)
        except Exception as exc:
            api = from_exception(exc)
            if api is None:
                raise
            if api.status == 404:
                api.param = "model"
            raise api from None
        return json_response(_model_out(info))

    # -- operations --------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> Response:
        state = services.lifecycle.state
        reasons = [] if state == "serving" else [f"daemon is {state}"]
        models: list[s.HealthModel] = []
        plane = getattr(services, "control", None)
        if plane is None:
            reasons.append("control plane is not running")
        else:
            try:
                report = plane.health()
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
        return json_response({"version": __version__, "python": platform.python_version()})

    @app.get("/metrics")
    async def metrics_route() -> Response:
        data, content_type = metrics.render()
        return Response(data, status=200, content_type=content_type)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return Response(openapi_bytes, status=200, content_type="application/json")

    return app
