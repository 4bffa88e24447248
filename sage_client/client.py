"""UnifiedInferenceClient: chat, generate and embed from Python against the SAGE daemon or any
OpenAI-compatible server, over its HTTP API. Depends on httpx and msgspec only.

    from sage_client.client import UnifiedInferenceClient
    with UnifiedInferenceClient.create(model="smollm2", embedding_model="minilm") as client:
        print(client.chat("Say hi").text)
        for delta in client.chat_stream("Count to five"):
            print(delta.text, end="")
        vectors = client.embed(["a", "b"]).vectors

Where it goes (`create()`): explicit `base_url` > `SAGE_BASE_URL` (+ `SAGE_API_KEY`) for a remote
daemon or any OpenAI-compatible server > the local daemon: `SAGE_SOCKET` or the default socket,
whose RPC welcome carries the HTTP address the daemon serves. `AsyncUnifiedInferenceClient` is
the async twin (`await AsyncUnifiedInferenceClient.acreate()`), with the same methods awaited.

`chat()` and `generate()` stream under the hood and assemble the reply: a long generation then
keeps the connection busy token by token, so one read timeout fits every length, and the usage
comes from the stream's last chunk (`stream_options.include_usage`).
"""

from __future__ import annotations

import email.utils
import os
import time
from pathlib import Path
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import httpx
import msgspec

from sage_client.paths import default_socket_path
from sage_client.rpc import START_HINT, DaemonNotRunning, RpcCallError, RpcClient
from sage_client.sse import SSEDecoder

DEFAULT_TIMEOUT_S = 300.0

# ---------------------------------------------------------------------------- typed results


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str


class Delta(msgspec.Struct, frozen=True):
    """One piece of a streamed reply. The last one carries `finish_reason`, and `usage` when the
    server reports it."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None


class Completion(msgspec.Struct, frozen=True):
    """A whole reply of chat() or generate()."""

    id: str
    model: str
    text: str
    finish_reason: str | None
    usage: Usage | None


class Embeddings(msgspec.Struct, frozen=True):
    model: str
    vectors: list[list[float]]
    usage: Usage | None


class ModelInfo(msgspec.Struct, frozen=True):
    id: str
    owned_by: str = ""
    kind: str | None = None  # SAGE's extension: "llm" or "embedding"
    state: str | None = None
    max_model_len: int | None = None
    dimensions: int | None = None


class Endpoint(msgspec.Struct, frozen=True):
    """Where requests go: `base_url` ends with the API prefix (".../v1"). `local` is True when it
    came from the local daemon's socket, so a refused connection means the daemon stopped."""

    base_url: str
    api_key: str | None = None
    local: bool = False
    source: str = ""


# ---------------------------------------------------------------------------- errors


class InferenceError(Exception):
    """An error from the server (status, code) or on the way to it (status 0)."""

    def __init__(self, message: str, *, status: int = 0, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param


class DaemonNotRunningError(InferenceError):
    """No daemon answers; the message says how to start one."""


class ConnectionFailedError(InferenceError):
    """A remote server (SAGE_BASE_URL) cannot be reached."""


class AuthenticationError(InferenceError):
    pass


class BadRequestError(InferenceError):
    pass


class ModelNotFoundError(InferenceError):
    pass


class OverloadedError(InferenceError):
    """The server's queue is full (429) or it is not ready (503): retry after `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: float | None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s


class ServerError(InferenceError):
    pass


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None
    param: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail | str


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def error_from_response(status: int, body: bytes, headers: httpx.Headers | dict[str, str] | None = None, model: str | None = None) -> InferenceError:
    """The typed error for an error reply (OpenAI's `{"error": {...}}` shape, or anything else)."""
    try:
        parsed = msgspec.json.decode(body, type=_ErrorBody).error
        detail = parsed if isinstance(parsed, _ErrorDetail) else _ErrorDetail(message=parsed)
    except (msgspec.DecodeError, msgspec.ValidationError):
        detail = _ErrorDetail(message=body.decode(errors="replace").strip()[:500] or f"HTTP {status}")
    code = None if detail.code is None else str(detail.code)
    kwargs: dict[str, Any] = {"status": status, "code": code, "param": detail.param}
    message = detail.message
    if status == 404 and (code == "model_not_found" or detail.param == "model" or "model" in message.lower()):
        return ModelNotFoundError(f"{message} (model {model!r}; `client.models()` lists what this server serves)", **kwargs)
    if status in (429, 503):
        retry = retry_after_seconds((headers or {}).get("retry-after"))
        when = f"retry in {retry:g} s" if retry is not None else "retry later"
        return OverloadedError(f"{message} ({when})", retry_after_s=retry, **kwargs)
    if status in (401, 403):
        return AuthenticationError(f"{message} (set SAGE_API_KEY, or pass api_key= to create())", **kwargs)
    if 400 <= status < 500:
        return BadRequestError(message, **kwargs)
    return ServerError(message, **kwargs)


# ---------------------------------------------------------------------------- no I/O: bodies and SSE


def _messages(messages: str | Iterable[ChatMessage | dict[str, str]]) -> list[dict[str, str]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = []
    for message in messages:
        out.append({"role": message.role, "content": message.content} if isinstance(message, ChatMessage) else dict(message))
    return out


def _sampling(body: dict[str, Any], max_tokens: int | None, temperature: float | None, stop: str | list[str] | None, seed: int | None, extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in (("max_tokens", max_tokens), ("temperature", temperature), ("stop", stop), ("seed", seed)):
        if value is not None:
            body[key] = value
    body.update(extra)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


class _ChunkDelta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _ChunkDelta | None = None
    text: str | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = []
    usage: Usage | None = None
    error: _ErrorDetail | None = None


class StreamParser:
    """An OpenAI stream's text → Deltas (the SSE framing is `sage_client.sse`'s). Holds the
    finish back until the usage chunk (or the end) so the last Delta carries both."""

    def __init__(self, model: str | None = None):
        self.model = model
        self.id = ""
        self.served_model = model or ""
        self.done = False
        self._sse = SSEDecoder()
        self._finish: str | None = None
        self._usage: Usage | None = None

    def feed(self, text: str) -> list[Delta]:
        """Deltas completed by a chunk of the response body (split anywhere)."""
        return [delta for event in self._sse.feed(text) for delta in self._event(event.data)]

    def feed_line(self, line: str) -> list[Delta]:
        event = self._sse.feed_line(line)
        return self._event(event.data) if event is not None else []

    def _event(self, data: str) -> list[Delta]:
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            chunk = msgspec.json.decode(data, type=_Chunk)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ServerError(f"the server sent an unreadable stream chunk: {exc}") from None
        if chunk.error is not None:
            code = str(chunk.error.code)
            raise error_from_response(int(code) if code.isdigit() else 500, msgspec.json.encode({"error": chunk.error}), model=self.model)
        self.id = self.id or chunk.id
        self.served_model = chunk.model or self.served_model
        if chunk.usage is not None:
            self._usage = chunk.usage
        out = []
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            text = choice.delta.content if choice.delta is not None else choice.text
            if choice.finish_reason is not None:
                self._finish = choice.finish_reason
            if text:
                out.append(Delta(text))
        return out

    def finish(self) -> Delta:
        """The closing Delta (after the last line)."""
        last = self._sse.close()  # an event the server did not end with a blank line
        text = "".join(delta.text for delta in self._event(last.data)) if last is not None else ""
        if self._finish is None and not self.done:
            raise ServerError("the stream ended before the reply was finished (the server closed it)")
        return Delta(text, self._finish, self._usage)


def _assemble(deltas: Iterable[Delta], parser: StreamParser) -> Completion:
    text, last = [], Delta("")
    for delta in deltas:
        text.append(delta.text)
        last = delta
    return Completion(parser.id, parser.served_model, "".join(text), last.finish_reason, last.usage)


class _EmbeddingItem(msgspec.Struct):
    index: int
    embedding: list[float]


class _EmbeddingReply(msgspec.Struct):
    data: list[_EmbeddingItem]
    model: str = ""
    usage: Usage | None = None


class _ModelList(msgspec.Struct):
    data: list[ModelInfo]


def _embeddings(body: bytes) -> Embeddings:
    reply = msgspec.json.decode(body, type=_EmbeddingReply)
    return Embeddings(reply.model, [item.embedding for item in sorted(reply.data, key=lambda i: i.index)], reply.usage)


def _models(body: bytes) -> list[ModelInfo]:
    return msgspec.json.decode(body, type=_ModelList).data


# ---------------------------------------------------------------------------- finding the daemon


def _normalize(url: str) -> str:
    """"http://host:8888" → "http://host:8888/v1"; a URL with a path is taken as it is."""
    url = url.rstrip("/")
    return url + "/v1" if httpx.URL(url).path in ("", "/") else url


def discover(base_url: str | None = None, api_key: str | None = None, socket_path: str | os.PathLike[str] | None = None) -> Endpoint:
    """Where the client goes; see the module docstring for the order."""
    api_key = api_key if api_key is not None else (os.environ.get("SAGE_API_KEY") or None)
    if base_url:
        return Endpoint(_normalize(base_url), api_key, source="base_url")
    if env_url := os.environ.get("SAGE_BASE_URL"):
        return Endpoint(_normalize(env_url), api_key, source="SAGE_BASE_URL")
    path = Path(socket_path) if socket_path else default_socket_path()
    try:
        with RpcClient(path, timeout=30) as rpc:
            assert rpc.welcome is not None
            http_url = rpc.welcome.http_url
    except DaemonNotRunning as exc:
        raise DaemonNotRunningError(f"{exc}; or point SAGE_BASE_URL at a running server") from None
    except RpcCallError as exc:
        raise InferenceError(f"the daemon on {path} refused us: {exc.message}", code=exc.code) from None
    return Endpoint(_normalize(http_url), api_key, local=True, source=str(path))


def _headers(endpoint: Endpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}


def _unreachable(endpoint: Endpoint, exc: Exception) -> InferenceError:
    if endpoint.local:
        return DaemonNotRunningError(f"the daemon at {endpoint.base_url} (found through {endpoint.source}) does not answer ({exc}): {START_HINT}")
    return ConnectionFailedError(f"cannot reach {endpoint.base_url} ({exc}); check SAGE_BASE_URL and that the server is up")


class _Base:
    def __init__(self, endpoint: Endpoint, model: str | None, embedding_model: str | None):
        self.endpoint = endpoint
        self.model = model
        self.embedding_model = embedding_model

    def _pick(self, model: str | None, default: str | None, what: str) -> str:
        chosen = model or default
        if not chosen:
            raise BadRequestError(f"say which {what} model: pass model= here or to create() (`client.models()` lists them)")
        return chosen

    def _chat_body(self, messages: Any, model: str | None, max_tokens: int | None, temperature: float | None, stop: Any, seed: int | None, extra: dict[str, Any]) -> dict[str, Any]:
        return _sampling({"model": self._pick(model, self.model, "chat"), "messages": _messages(messages)}, max_tokens, temperature, stop, seed, extra)

    def _generate_body(self, prompt: str, model: str | None, max_tokens: int | None, temperature: float | None, stop: Any, seed: int | None, extra: dict[str, Any]) -> dict[str, Any]:
        return _sampling({"model": self._pick(model, self.model, "LLM"), "prompt": prompt}, max_tokens, temperature, stop, seed, extra)

    def _embed_body(self, texts: str | list[str], model: str | None) -> dict[str, Any]:
        return {"model": self._pick(model, self.embedding_model, "embedding"), "input": [texts] if isinstance(texts, str) else list(texts)}


# ---------------------------------------------------------------------------- sync


class UnifiedInferenceClient(_Base):
    """Blocking client. Use `create()`; close it (or use `with`) to free its connections."""

    def __init__(self, endpoint: Endpoint, *, model: str | None = None, embedding_model: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__(endpoint, model, embedding_model)
        self._http = httpx.Client(base_url=endpoint.base_url, headers=_headers(endpoint), timeout=httpx.Timeout(timeout, connect=10.0))

    @classmethod
    def create(cls, *, base_url: str | None = None, api_key: str | None = None, socket_path: str | os.PathLike[str] | None = None,
               model: str | None = None, embedding_model: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> UnifiedInferenceClient:
        return cls(discover(base_url, api_key, socket_path), model=model, embedding_model=embedding_model, timeout=timeout)

    def __enter__(self) -> UnifiedInferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, model: str | None = None) -> bytes:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise _unreachable(self.endpoint, exc) from None
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content, response.headers, model)
        return response.content

    def chat_stream(self, messages: str | Iterable[ChatMessage | dict[str, str]], *, model: str | None = None, max_tokens: int | None = None,
                    temperature: float | None = None, stop: str | list[str] | None = None, seed: int | None = None, **extra: Any) -> Iterator[Delta]:
        body = self._chat_body(messages, model, max_tokens, temperature, stop, seed, extra)
        return self._stream(StreamParser(body["model"]), "/chat/completions", body)

    def chat(self, messages: str | Iterable[ChatMessage | dict[str, str]], **kwargs: Any) -> Completion:
        body = self._chat_body(messages, kwargs.pop("model", None), kwargs.pop("max_tokens", None), kwargs.pop("temperature", None), kwargs.pop("stop", None), kwargs.pop("seed", None), kwargs)
        parser = StreamParser(body["model"])
        return _assemble(self._stream(parser, "/chat/completions", body), parser)

    def generate_stream(self, prompt: str, *, model: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
                        stop: str | list[str] | None = None, seed: int | None = None, **extra: Any) -> Iterator[Delta]:
        body = self._generate_body(prompt, model, max_tokens, temperature, stop, seed, extra)
        return self._stream(StreamParser(body["model"]), "/completions", body)

    def generate(self, prompt: str, **kwargs: Any) -> Completion:
        body = self._generate_body(prompt, kwargs.pop("model", None), kwargs.pop("max_tokens", None), kwargs.pop("temperature", None), kwargs.pop("stop", None), kwargs.pop("seed", None), kwargs)
        parser = StreamParser(body["model"])
        return _assemble(self._stream(parser, "/completions", body), parser)

    def _stream(self, parser: StreamParser, path: str, body: dict[str, Any]) -> Iterator[Delta]:
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    raise error_from_response(response.status_code, response.read(), response.headers, body["model"])
                for text in response.iter_text():
                    yield from parser.feed(text)
        except httpx.TransportError as exc:
            raise _unreachable(self.endpoint, exc) from None
        yield parser.finish()

    def embed(self, texts: str | list[str], *, model: str | None = None) -> Embeddings:
        body = self._embed_body(texts, model)
        return _embeddings(self._request("POST", "/embeddings", body, body["model"]))

    def models(self) -> list[ModelInfo]:
        return _models(self._request("GET", "/models"))


# ---------------------------------------------------------------------------- async


class AsyncUnifiedInferenceClient(_Base):
    """The async twin (any anyio backend httpx supports: trio or asyncio)."""

    def __init__(self, endpoint: Endpoint, *, model: str | None = None, embedding_model: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__(endpoint, model, embedding_model)
        self._http = httpx.AsyncClient(base_url=endpoint.base_url, headers=_headers(endpoint), timeout=httpx.Timeout(timeout, connect=10.0))

    @classmethod
    async def acreate(cls, *, base_url: str | None = None, api_key: str | None = None, socket_path: str | os.PathLike[str] | None = None,
                      model: str | None = None, embedding_model: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> AsyncUnifiedInferenceClient:
        # Discovery is one short blocking RPC exchange on a local socket (or none).
        return cls(discover(base_url, api_key, socket_path), model=model, embedding_model=embedding_model, timeout=timeout)

    async def __aenter__(self) -> AsyncUnifiedInferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _stream(self, parser: StreamParser, path: str, body: dict[str, Any]) -> AsyncIterator[Delta]:
        try:
            async with self._http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    raise error_from_response(response.status_code, await response.aread(), response.headers, body["model"])
                async for text in response.aiter_text():
                    for delta in parser.feed(text):
                        yield delta
        except httpx.TransportError as exc:
            raise _unreachable(self.endpoint, exc) from None
        yield parser.finish()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None, model: str | None = None) -> bytes:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise _unreachable(self.endpoint, exc) from None
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.content, response.headers, model)
        return response.content

    def chat_stream(self, messages: str | Iterable[ChatMessage | dict[str, str]], *, model: str | None = None, max_tokens: int | None = None,
                    temperature: float | None = None, stop: str | list[str] | None = None, seed: int | None = None, **extra: Any) -> AsyncIterator[Delta]:
        body = self._chat_body(messages, model, max_tokens, temperature, stop, seed, extra)
        return self._stream(StreamParser(body["model"]), "/chat/completions", body)

    async def chat(self, messages: str | Iterable[ChatMessage | dict[str, str]], **kwargs: Any) -> Completion:
        body = self._chat_body(messages, kwargs.pop("model", None), kwargs.pop("max_tokens", None), kwargs.pop("temperature", None), kwargs.pop("stop", None), kwargs.pop("seed", None), kwargs)
        parser = StreamParser(body["model"])
        return _assemble([delta async for delta in self._stream(parser, "/chat/completions", body)], parser)

    def generate_stream(self, prompt: str, *, model: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
                        stop: str | list[str] | None = None, seed: int | None = None, **extra: Any) -> AsyncIterator[Delta]:
        body = self._generate_body(prompt, model, max_tokens, temperature, stop, seed, extra)
        return self._stream(StreamParser(body["model"]), "/completions", body)

    async def generate(self, prompt: str, **kwargs: Any) -> Completion:
        body = self._generate_body(prompt, kwargs.pop("model", None), kwargs.pop("max_tokens", None), kwargs.pop("temperature", None), kwargs.pop("stop", None), kwargs.pop("seed", None), kwargs)
        parser = StreamParser(body["model"])
        return _assemble([delta async for delta in self._stream(parser, "/completions", body)], parser)

    async def embed(self, texts: str | list[str], *, model: str | None = None) -> Embeddings:
        body = self._embed_body(texts, model)
        return _embeddings(await self._request("POST", "/embeddings", body, body["model"]))

    async def models(self) -> list[ModelInfo]:
        return _models(await self._request("GET", "/models"))
