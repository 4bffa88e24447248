"""RemoteOpenAIEngine: an engine that is any OpenAI-compatible server (another sage daemon, vLLM,
llama.cpp's server, Ollama), reached with httpx.

The wire handling is split the hypercorn way: `sage_client.sse.SSEDecoder` (the one SSE parser,
shared with the client) and `OpenAIStreamAssembler` do no I/O (text in, events and
GenerationChunks out) and are tested alone; `RemoteOpenAIEngine` only moves bytes. The vLLM
manager serves through this engine, so there is one SSE path.

Errors: a 4xx from the remote is the client's mistake as the remote sees it (a model it does
not serve, a prompt too long): `UpstreamError` with the remote's status and message, which the
doors pass on. A 5xx, a malformed reply or no answer is this engine failing: `EngineError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import msgspec
import trio

from sage_client.sse import SSEDecoder, ServerSentEvent
from sage_client.protocol import ModelKind
from sage_daemon.core.errors import UpstreamError
from sage_daemon.engines.base import (
    ChatTemplateMissingError,
    ContextOverflowError,
    EmbeddingResult,
    EngineError,
    EngineHealth,
    EngineState,
    EngineStats,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    RerankResult,
    SamplingParams,
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)


class RemoteSpec(msgspec.Struct, frozen=True):
    """How to reach an OpenAI-compatible server (the pool fills it from `[[models]]`)."""

    name: str  # the model's name in this daemon
    kind: ModelKind
    base_url: str  # http://host:port, with or without a trailing /v1
    remote_model: str | None = None  # the model's id at the remote; None = same as name
    api_key: str | None = None
    n_ctx: int = 0  # context per sequence; 0 = take the remote's max_model_len when it reports one
    parallel: int = 8  # requests this daemon sends at once (connection pool size)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0  # longest silence between two stream chunks
    # load()'s probes (GET /v1/models, /health) must be answered within this: a server that
    # accepts connections and never answers fails the load in seconds, not read_timeout_s.
    load_timeout_s: float = 10.0
    chat: bool = True  # whether the remote model takes chat requests (the remote has the last word)


class RemoteServerError(EngineError):
    """A 5xx from the remote, a malformed reply, or an error event mid-stream: the remote failed
    this request (a 503 to our client, like any engine failure). `remote_status` is what the
    remote said; `message` its own words."""

    def __init__(self, remote_status: int, message: str, *, type: str = "", code: str | None = None, param: str | None = None):  # noqa: A002
        super().__init__(f"the remote answered {remote_status}: {message}")
        self.remote_status = remote_status
        self.message = message
        self.remote_type = type
        self.remote_code = code
        self.remote_param = param


_FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "eos": "stop", "abort": "cancelled", "tool_calls": "tool_calls", "function_call": "tool_calls"}


def _token_logprobs(value: Any, top_logprobs: int) -> tuple[TokenLogprob, ...]:
    """A stream event's `logprobs`, in the chat shape ({"content": [...]}) or the legacy
    completions one ({"tokens", "token_logprobs", "top_logprobs"}), as TokenLogprobs."""
    if not isinstance(value, dict):
        return ()

    def token_bytes(entry: dict[str, Any]) -> tuple[int, ...]:
        raw = entry.get("bytes")
        return tuple(raw) if isinstance(raw, list) else tuple(str(entry.get("token", "")).encode())

    if isinstance(value.get("content"), list):
        return tuple(
            TokenLogprob(
                str(e.get("token", "")), token_bytes(e), float(e.get("logprob") or 0.0),
                tuple(TopLogprob(str(t.get("token", "")), token_bytes(t), float(t.get("logprob") or 0.0)) for t in (e.get("top_logprobs") or ())[:top_logprobs]),
            )
            for e in value["content"]
            if isinstance(e, dict)
        )
    tokens, logprobs, tops = value.get("tokens") or [], value.get("token_logprobs") or [], value.get("top_logprobs") or []
    out = []
    for i, token in enumerate(tokens):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        out.append(TokenLogprob(
            str(token), tuple(str(token).encode()), float(logprobs[i] if i < len(logprobs) and logprobs[i] is not None else 0.0),
            tuple(TopLogprob(str(t), tuple(str(t).encode()), float(v)) for t, v in sorted(top.items(), key=lambda item: -item[1])[:top_logprobs]),
        ))
    return tuple(out)


def _tool_call_deltas(value: Any) -> tuple[ToolCallDelta, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            continue
        function = entry.get("function") or {}
        index = entry.get("index")
        out.append(ToolCallDelta(
            index=index if isinstance(index, int) else i,
            id=entry.get("id") or None,
            name=function.get("name") or None,
            arguments=function.get("arguments") or "",
        ))
    return tuple(out)


def chat_body(request: GenerationRequest) -> dict[str, Any]:
    """The chat fields of a request as an OpenAI-compatible server takes them: the messages with
    their tool calls, the tools and tool choice, and the output constraint (response_format for
    JSON, vLLM's structured_outputs for a regex, a choice or a grammar)."""
    messages: list[dict[str, Any]] = []
    for m in request.messages or ():
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        if m.name is not None and m.role == "tool":
            message["name"] = m.name
        messages.append(message)
    body: dict[str, Any] = {"messages": messages}
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters, **({"strict": True} if t.strict else {})}}
            for t in request.tools
        ]
        choice = request.tool_choice
        body["tool_choice"] = choice if choice in ("none", "auto", "required") else {"type": "function", "function": {"name": choice}}
        body["parallel_tool_calls"] = request.parallel_tool_calls
    constraint = request.constraint
    if constraint is not None:
        if constraint.kind == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": constraint.name, "schema": json.loads(constraint.value), "strict": True}}
        elif constraint.kind == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif constraint.kind == "regex":
            body["structured_outputs"] = {"regex": constraint.value}
        elif constraint.kind == "choice":
            body["structured_outputs"] = {"choice": json.loads(constraint.value)}
        else:  # gbnf, lark: vLLM's grammar field takes both (its backend tells them apart)
            body["structured_outputs"] = {"grammar": constraint.value}
    return body


class OpenAIStreamAssembler:
    """Turns the payloads of an OpenAI completion / chat stream into GenerationChunks.

    The remote sends finish_reason in one event and (with include_usage) the token counts in a
    later one; ours carries both on the last chunk, so the finish is held until usage or [DONE].
    """

    def __init__(self, top_logprobs: int = 0) -> None:
        self.top_logprobs = top_logprobs  # alternatives kept per token (a legacy top dict also holds the sampled one)
        self.finish_reason: FinishReason | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_prompt_tokens = 0
        self.done = False

    def feed(self, event: ServerSentEvent) -> list[GenerationChunk]:
        """Chunks to emit for one event. Raises UpstreamError (an error event with a 4xx code)
        or RemoteServerError (any other error event, or one that is not JSON)."""
        if self.done:
            return []
        if event.data.strip() == "[DONE]":
            return self.finish()
        try:
            payload = json.loads(event.data)
        except json.JSONDecodeError as exc:
            raise RemoteServerError(502, f"the remote sent a malformed stream event: {event.data[:200]!r}") from exc
        if "error" in payload:
            raise error_from_body(payload, status=500)
        out: list[GenerationChunk] = []
        for choice in payload.get("choices") or ():
            text = choice.get("text")
            if text is None:
                text = (choice.get("delta") or {}).get("content") or ""
            logprobs = _token_logprobs(choice.get("logprobs"), self.top_logprobs)
            delta = choice.get("delta") or {}
            # vLLM and llama-server say reasoning_content; newer vLLM says reasoning.
            reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
            calls = _tool_call_deltas(delta.get("tool_calls"))
            if text or logprobs or reasoning or calls:
                out.append(GenerationChunk(text=text, logprobs=logprobs, reasoning=reasoning, tool_calls=calls))
            reason = choice.get("finish_reason")
            if reason:
                self.finish_reason = _FINISH_REASONS.get(reason, "stop")
        usage = payload.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            self.cached_prompt_tokens = int(details.get("cached_tokens") or 0)
            if self.finish_reason is not None:  # usage is the last event the remote sends
                out.extend(self.finish())
        return out

    def finish(self) -> list[GenerationChunk]:
        if self.done:
            return []
        if self.finish_reason is None:
            raise EngineError("the remote stream ended without a finish_reason (did the remote server stop?)")
        self.done = True
        return [GenerationChunk(
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens,
        )]


def error_from_body(body: Any, status: int) -> UpstreamError | RemoteServerError:
    """The typed error for an error reply: OpenAI's body ({"error": {...}}), FastAPI's
    ({"detail": ...}), llama.cpp's / Ollama's ({"error": "..."}) or plain text. A 4xx is
    UpstreamError (passed on to the client as that 4xx), anything else RemoteServerError."""
    message, type_, code, param = "", "", None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = str(err.get("message") or "")
        type_ = str(err.get("type") or "")
        code = None if err.get("code") is None else str(err.get("code"))
        param = err.get("param") if isinstance(err.get("param"), str) else None
        status = int(err.get("code")) if isinstance(err.get("code"), int) and 400 <= err["code"] < 600 else status
    elif isinstance(body, dict) and "detail" in body:
        message = str(body["detail"])
    elif isinstance(body, dict) and isinstance(body.get("error"), str):  # llama.cpp server / Ollama
        message = body["error"]
    else:
        message = str(body)
    message = message or f"HTTP {status}"
    if 400 <= status < 500:
        # vLLM puts the status itself in `code` (400); only a word is an OpenAI error code.
        word = code if code is not None and not code.isdigit() else None
        return UpstreamError(status, message, code=word, param=param)
    return RemoteServerError(status, message, type=type_, code=code, param=param)


def sampling_body(sampling: SamplingParams) -> dict[str, Any]:
    """OpenAI request fields for our sampling; non-standard ones only when they are not the default."""
    body: dict[str, Any] = {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.presence_penalty:
        body["presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        body["frequency_penalty"] = sampling.frequency_penalty
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
    # Accepted by vLLM, llama.cpp's server and sage; OpenAI itself would refuse them.
    if sampling.top_k:
        body["top_k"] = sampling.top_k
    if sampling.min_p:
        body["min_p"] = sampling.min_p
    if sampling.ignore_eos:
        body["ignore_eos"] = True
    return body


class RemoteOpenAIEngine:
    """An LLMEngine, EmbeddingEngine or RerankEngine (per spec.kind) served by an OpenAI-compatible
    server (for rerank: one with the Jina/Cohere-shaped /v1/rerank of llama-server, vLLM, Infinity)."""

    backend = "remote"

    def __init__(self, spec: RemoteSpec, *, backend: str = "remote"):
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.backend = backend
        self.local_tokenizer = False  # the server tokenizes
        self.remote_model = spec.remote_model or spec.name
        root = spec.base_url.rstrip("/")
        self.root_url = root[: -len("/v1")] if root.endswith("/v1") else root
        self.api_url = self.root_url + "/v1"
        self.n_ctx = spec.n_ctx  # 0 until the remote reports max_model_len: unknown, the remote checks
        self.parallel = spec.parallel
        self.dimensions = 0
        self.max_seq_length = spec.n_ctx
        # The OpenAI embeddings API takes token arrays; `dimensions` stays refused here, as it
        # always was for remotes: a server that ignores it would hand back vectors of another size.
        self.accepts_token_ids = True
        self.supports_dimensions = False
        self._client: httpx.AsyncClient | None = None
        self._state = EngineState.STOPPED
        self._detail = ""
        self._in_flight = 0
        self._requests_total = 0
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._cached_tokens_total = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def _new_client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.spec.api_key}"} if self.spec.api_key else {}
        timeout = httpx.Timeout(connect=self.spec.connect_timeout_s, read=self.spec.read_timeout_s, write=30.0, pool=None)
        limits = httpx.Limits(max_connections=max(1, self.spec.parallel), max_keepalive_connections=max(1, self.spec.parallel))
        return httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits, trust_env=False)

    async def load(self) -> None:
        """Check the remote answers and serves `remote_model`; learn its context and dimensions."""
        self._state, self._detail = EngineState.LOADING, ""
        if self._client is None:
            self._client = self._new_client()
        try:
            await self._check_remote()
            if self.kind == "embedding" and not self.dimensions:
                probe = await self.embed(["dimension probe"])
                self.dimensions = probe.dimensions
        except Exception as exc:
            self._state, self._detail = EngineState.ERROR, str(exc)
            await self._close_client()
            if isinstance(exc, EngineError):
                raise
            raise EngineError(f"remote {self.root_url}: {exc}") from exc
        self._state, self._detail = EngineState.READY, f"{self.remote_model} at {self.root_url}"

    async def _probe(self, url: str) -> httpx.Response:
        """GET for load(): connect within connect_timeout_s, the whole answer within load_timeout_s."""
        assert self._client is not None
        spec = self.spec
        timeout = httpx.Timeout(connect=spec.connect_timeout_s, read=spec.load_timeout_s, write=spec.load_timeout_s, pool=spec.load_timeout_s)
        try:
            # httpx's read timeout is per read; the deadline bounds a server that trickles bytes too.
            with trio.fail_after(spec.connect_timeout_s + spec.load_timeout_s):
                return await self._client.get(url, timeout=timeout)
        except (httpx.TimeoutException, trio.TooSlowError) as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise EngineError(f"remote {self.root_url} is not reachable: {describe(exc)}") from exc
            raise EngineError(
                f"remote {self.root_url} accepted the connection but did not answer GET {url.removeprefix(self.root_url)} "
                f"within {spec.load_timeout_s:g} s (is it an OpenAI-compatible server, and not stuck?)"
            ) from exc
        except httpx.TransportError as exc:
            raise EngineError(f"remote {self.root_url} is not reachable: {describe(exc)}") from exc

    async def _check_remote(self) -> None:
        response = await self._probe(self.api_url + "/models")
        if response.status_code == 404:  # a server without a model list: reachability is all we learn
            health = await self._probe(self.root_url + "/health")
            if health.status_code >= 400:
                raise EngineError(f"remote {self.root_url} is not healthy: /health answered {health.status_code}")
            return
        if response.status_code >= 400:
            err = error_from_body(_json_or_text(response), response.status_code)
            raise EngineError(f"remote {self.root_url} refused GET /v1/models: {response.status_code} {err.message}")
        entries = _json_or_text(response)
        entries = entries.get("data", []) if isinstance(entries, dict) else []
        served = {str(e.get("id")): e for e in entries if isinstance(e, dict)}
        if self.remote_model not in served:
            names = ", ".join(sorted(served)) or "(none)"
            raise EngineError(f"remote {self.root_url} has no model {self.remote_model}; it serves: {names}")
        max_len = served[self.remote_model].get("max_model_len")
        if not self.spec.n_ctx and isinstance(max_len, int):
            self.n_ctx = self.max_seq_length = max_len

    async def unload(self) -> None:
        await self._close_client()
        self._state, self._detail = EngineState.STOPPED, ""

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def health(self) -> EngineHealth:
        return EngineHealth(self._state, self._state is EngineState.READY, self._detail)

    def stats(self) -> EngineStats:
        return EngineStats(
            slots_total=self.parallel,
            slots_busy=self._in_flight,
            requests_total=self._requests_total,
            prompt_tokens_total=self._prompt_tokens_total,
            generation_tokens_total=self._generation_tokens_total,
            cached_prompt_tokens_total=self._cached_tokens_total,
        )

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """What can be checked here without a tokenizer; the remote checks the rest (and its 4xx
        reaches the client as UpstreamError). The request goes on unchanged."""
        self._require_client()
        if request.messages is not None and not self.spec.chat:
            raise ChatTemplateMissingError(f"model {self.name} takes no chat requests at its remote: use /v1/completions")
        if request.prompt_tokens is not None and self.n_ctx:
            if len(request.prompt_tokens) + request.sampling.max_tokens > self.n_ctx:
                raise ContextOverflowError(len(request.prompt_tokens), request.sampling.max_tokens, self.n_ctx)
        return request

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError("a remote engine has no local tokenizer; send text and let the remote count tokens")

    def has_chat_template(self) -> bool:
        return self.spec.chat

    # -- requests ----------------------------------------------------------------------------

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None or self._state is not EngineState.READY:
            detail = f": {self._detail}" if self._detail else ""
            raise EngineError(f"remote engine {self.name} is not ready ({self._state.value}{detail})")
        return self._client

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream from /v1/completions (prompt or token ids) or /v1/chat/completions (messages).

        Cancelling the consumer (or closing this generator) leaves the `async with` below, which
        closes the HTTP response: the remote sees the disconnect and stops generating.
        """
        client = self._require_client()
        body: dict[str, Any] = {"model": self.remote_model, "stream": True, "stream_options": {"include_usage": True}}
        body.update(sampling_body(request.sampling))
        logprobs = request.sampling.logprobs
        if request.messages is not None:
            path = "/chat/completions"
            body.update(chat_body(request))
            if logprobs is not None:
                body.update(logprobs=True, top_logprobs=logprobs)
        else:
            path = "/completions"
            body["prompt"] = request.prompt if request.prompt is not None else list(request.prompt_tokens or ())
            if logprobs is not None:
                body["logprobs"] = logprobs
        self._in_flight += 1
        self._requests_total += 1
        assembler = OpenAIStreamAssembler(top_logprobs=logprobs or 0)
        try:
            async with client.stream("POST", self.api_url + path, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from_body(_json_or_text(response), response.status_code)
                decoder = SSEDecoder()
                async for text in response.aiter_text():
                    for event in decoder.feed(text):
                        for chunk in assembler.feed(event):
                            yield chunk
                        if assembler.done:
                            return
                last = decoder.close()
                for chunk in assembler.feed(last) if last is not None else ():
                    yield chunk
                for chunk in assembler.finish():
                    yield chunk
        except httpx.TransportError as exc:
            raise EngineError(f"remote {self.root_url} failed during the request: {describe(exc)}") from exc
        finally:
            self._in_flight -= 1
            self._prompt_tokens_total += assembler.prompt_tokens
            self._generation_tokens_total += assembler.completion_tokens
            self._cached_tokens_total += assembler.cached_prompt_tokens

    async def embed(self, texts: list[str], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        # `background` matters only to engines sharing this host's cores; the remote schedules its own.
        return await self._embed(list(texts), dimensions)

    async def embed_tokens(self, token_lists: list[list[int]], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        return await self._embed([list(ids) for ids in token_lists], dimensions)

    async def _embed(self, inputs: list[Any], dimensions: int | None) -> EmbeddingResult:
        # load() probes the dimensions while LOADING; otherwise only a READY engine serves
        client = self._client if self._state is EngineState.LOADING and self._client else self._require_client()
        if not inputs:
            return EmbeddingResult([], 0, 0, self.dimensions)
        body: dict[str, Any] = {"model": self.remote_model, "input": inputs, "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        self._in_flight += 1
        self._requests_total += 1
        try:
            response = await client.post(self.api_url + "/embeddings", json=body)
        except httpx.TransportError as exc:
            raise EngineError(f"remote {self.root_url} failed during the request: {describe(exc)}") from exc
        finally:
            self._in_flight -= 1
        payload = _json_or_text(response)
        if response.status_code >= 400:
            raise error_from_body(payload, response.status_code)
        try:
            rows = sorted(payload["data"], key=lambda row: row["index"])
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteServerError(502, f"the remote sent a malformed embeddings response: {str(payload)[:200]}") from exc
        prompt_tokens = int((payload.get("usage") or {}).get("prompt_tokens") or 0)
        self._prompt_tokens_total += prompt_tokens
        # The OpenAI response does not say whether inputs were cut; truncated stays 0.
        return EmbeddingResult(vectors, prompt_tokens, 0, len(vectors[0]) if vectors else self.dimensions)


    async def rerank(self, groups: list[tuple[str, list[str]]], background: bool = False) -> list[RerankResult]:
        """One POST /v1/rerank per group (the API takes one query), sent concurrently."""
        results: list[RerankResult | None] = [None] * len(groups)
        errors: list[BaseException] = []

        async def one(index: int, query: str, documents: list[str]) -> None:
            try:
                results[index] = await self._rerank_one(query, documents)
            except Exception as exc:  # noqa: BLE001 - reported below, first one wins
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for index, (query, documents) in enumerate(groups):
                nursery.start_soon(one, index, query, documents)
        if errors:
            raise errors[0]
        return [r for r in results if r is not None]

    async def _rerank_one(self, query: str, documents: list[str]) -> RerankResult:
        client = self._require_client()
        body = {"model": self.remote_model, "query": query, "documents": documents, "top_n": len(documents), "return_documents": False}
        self._in_flight += 1
        self._requests_total += 1
        try:
            response = await client.post(self.api_url + "/rerank", json=body)
        except httpx.TransportError as exc:
            raise EngineError(f"remote {self.root_url} failed during the request: {describe(exc)}") from exc
        finally:
            self._in_flight -= 1
        payload = _json_or_text(response)
        if response.status_code >= 400:
            raise error_from_body(payload, response.status_code)
        scores: list[float | None] = [None] * len(documents)
        try:
            for row in payload["results"]:
                scores[int(row["index"])] = float(row["relevance_score"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RemoteServerError(502, f"the remote sent a malformed rerank response: {str(payload)[:200]}") from exc
        if any(s is None for s in scores):
            raise RemoteServerError(502, f"the remote's rerank response scored {sum(s is not None for s in scores)} of {len(documents)} documents")
        usage = payload.get("usage") or {} if isinstance(payload, dict) else {}
        prompt_tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        self._prompt_tokens_total += prompt_tokens
        return RerankResult([float(s) for s in scores if s is not None], prompt_tokens)


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def describe(exc: BaseException) -> str:
    """httpx errors often have an empty str(); name the type at least."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
