"""From decoded OpenAI request bodies to what the control plane takes, and back for models.

No I/O and no request context: the routes in http/app.py hand in the decoded Struct, the
headers and the request id; what comes back is a `GenerationPlan` (the GenerationRequests and
RequestMetas of one HTTP request, plus how to shape the reply) or the embedding inputs.
Anything wrong that the schema cannot say raises an ApiError naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from sage_daemon.control.api import InvalidRequestError, ModelInfo, Priority, RequestKind, RequestMeta
from sage_daemon.engines.base import ChatMessage, GenerationRequest, SamplingParams
from sage_daemon.http import schemas as s
from sage_daemon.http.errors import bad_request, unsupported

CHAT_DEFAULT_MAX_TOKENS = 256
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions
MAX_CHOICES = 64  # prompts x n of one completions request


class Headers(Protocol):
    def get(self, key: str) -> str | None: ...


@dataclass(frozen=True)
class GenerationPlan:
    """The generations one chat or completions request asks for, and how its reply is shaped."""

    kind: RequestKind
    model: str
    requests: list[GenerationRequest]
    metas: list[RequestMeta]
    prompt_of: list[int]  # choice i continues prompt prompt_of[i] (usage counts each prompt once)
    stream: bool
    include_usage: bool
    param_hint: str  # the body field a 400 that names none is about ("messages" or "prompt")

    @property
    def logprobs(self) -> bool:
        return self.requests[0].sampling.logprobs is not None


# -- scheduling hints -------------------------------------------------------------------------


def request_meta(headers: Headers, request_id: str, body_metadata: dict[str, str] | None) -> RequestMeta:
    """X-SAGE-Priority (or metadata.priority) and X-SAGE-Deadline-Ms → RequestMeta."""
    priority = Priority.NORMAL
    header = headers.get("X-SAGE-Priority")
    if header is not None:
        priority = _priority(header, "X-SAGE-Priority")
    elif body_metadata and "priority" in body_metadata:
        priority = _priority(body_metadata["priority"], "metadata.priority")
    deadline_s = None
    raw = headers.get("X-SAGE-Deadline-Ms")
    if raw is not None:
        try:
            deadline_ms = float(raw)
        except ValueError:
            deadline_ms = float("nan")
        if not (0 < deadline_ms <= 86_400_000):  # also refuses nan and inf
            raise bad_request(f"invalid X-SAGE-Deadline-Ms {raw!r}: give milliseconds, a number > 0 and <= 86400000", param="X-SAGE-Deadline-Ms")
        deadline_s = deadline_ms / 1000.0
    return RequestMeta(request_id=request_id, priority=priority, deadline_s=deadline_s, caller="http")


def _priority(text: str, where: str) -> Priority:
    try:
        return Priority.parse(text)
    except InvalidRequestError as exc:
        raise bad_request(f"{where}: {exc.message}", param=where) from None


def metas_for(meta: RequestMeta, count: int) -> list[RequestMeta]:
    """One RequestMeta per choice; several get the request id with a suffix each."""
    if count == 1:
        return [meta]
    return [msgspec.structs.replace(meta, request_id=f"{meta.request_id}-{i}") for i in range(count)]


# -- sampling ---------------------------------------------------------------------------------


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


def sampling_params(req: s.ChatCompletionRequest | s.CompletionRequest, max_tokens: int, logprobs: int | None = None) -> SamplingParams:
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


def _refuse_common(req: s.ChatCompletionRequest | s.CompletionRequest) -> None:
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed when stream is true", param="stream_options")


# -- chat -------------------------------------------------------------------------------------


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


def chat_plan(req: s.ChatCompletionRequest, meta: RequestMeta) -> GenerationPlan:
    _refuse_common(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    if req.tools or req.functions:
        raise unsupported("tool calling (tools, functions)", "tools" if req.tools else "functions")
    if req.tool_choice not in (None, "none"):
        raise unsupported("tool_choice", "tool_choice")
    if req.response_format is not None and req.response_format.type != "text":
        raise unsupported(f"response_format {req.response_format.type!r}", "response_format")
    messages = _chat_messages(req.messages)
    max_tokens = req.max_completion_tokens or req.max_tokens or CHAT_DEFAULT_MAX_TOKENS
    n = req.n or 1
    params = sampling_params(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
    metas = metas_for(meta, n)
    return GenerationPlan(
        kind="chat", model=req.model,
        requests=[GenerationRequest(request_id=m.request_id, sampling=params, messages=messages) for m in metas],
        metas=metas, prompt_of=[0] * n, stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage), param_hint="messages",
    )


# -- completions ------------------------------------------------------------------------------


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


def completion_plan(req: s.CompletionRequest, meta: RequestMeta) -> GenerationPlan:
    _refuse_common(req)
    if req.echo:
        raise unsupported("echo", "echo")
    if req.suffix:
        raise unsupported("suffix", "suffix")
    if req.best_of is not None and req.best_of != (req.n or 1):
        raise unsupported("best_of other than n", "best_of")
    prompts = _completion_prompts(req.prompt)
    n = req.n or 1
    if len(prompts) * n > MAX_CHOICES:
        raise bad_request(f"at most {MAX_CHOICES} choices per request (prompts x n); this one asks for {len(prompts) * n}", param="n")
    params = sampling_params(req, req.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS, req.logprobs)
    metas = metas_for(meta, len(prompts) * n)
    requests: list[GenerationRequest] = []
    prompt_of: list[int] = []
    for p_index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) and not prompt:
            raise bad_request("a prompt of token ids must not be empty", param="prompt")
        for _ in range(n):
            rid = metas[len(requests)].request_id
            if isinstance(prompt, str):
                requests.append(GenerationRequest(request_id=rid, sampling=params, prompt=prompt))
            else:
                requests.append(GenerationRequest(request_id=rid, sampling=params, prompt_tokens=prompt))
            prompt_of.append(p_index)
    return GenerationPlan(
        kind="completion", model=req.model, requests=requests, metas=metas, prompt_of=prompt_of, stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage), param_hint="prompt",
    )


# -- embeddings and models ----------------------------------------------------------------------


def embedding_inputs(value: str | list[Any]) -> list[str] | list[list[int]]:
    """The texts, or the token-id lists, of an embeddings request (empty strings are refused by the schema)."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(x, int) for x in value):
        return [list(value)]
    if all(isinstance(x, str) for x in value) or all(isinstance(x, list) for x in value):
        return value
    raise bad_request("input must be a string, a list of strings, a list of token ids or a list of lists of token ids, not a mix", param="input")


def model_out(info: ModelInfo) -> s.Model:
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


# -- JSON numbers -----------------------------------------------------------------------------


def whole_floats_as_ints(body: object) -> tuple[object, bool]:
    """`body` with the whole floats (6.0) of its fields and of their lists (token ids, up to two
    levels) as ints, and whether anything changed. JSON Schema counts 6.0 as an integer, so the
    door must too, or /openapi.json would accept what the server refuses. Only the depths where
    the request types have integers are visited: no recursion a hostile body could deepen."""
    if not isinstance(body, dict):
        return body, False
    changed = False

    def fix(value: object, depth: int) -> object:
        nonlocal changed
        if type(value) is float and value.is_integer():
            changed = True
            return int(value)
        if type(value) is list and depth < 2:
            return [fix(item, depth + 1) for item in value]
        return value

    out = {key: fix(value, 0) for key, value in body.items()}
    return out, changed
