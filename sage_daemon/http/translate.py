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
from sage_daemon.engines.base import ChatMessage, GenerationRequest, OutputConstraint, SamplingParams, ToolCall, ToolSpec
from sage_daemon.engines.grammar import check_json_schema
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


def _message_text(message: s.ChatMessageIn, i: int) -> str | None:
    if message.content is None or isinstance(message.content, str):
        return message.content
    parts = []
    for j, part in enumerate(message.content):
        if part.type != "text":
            raise bad_request(
                f"content part type {part.type!r} is not supported: this server takes text parts only",
                param=f"messages[{i}].content[{j}].type",
            )
        parts.append(part.text)
    return "\n".join(parts)


def _chat_messages(messages: list[s.ChatMessageIn]) -> tuple[ChatMessage, ...]:
    out = []
    for i, message in enumerate(messages):
        text = _message_text(message, i)
        calls: tuple[ToolCall, ...] = ()
        if message.tool_calls:
            if message.role != "assistant":
                raise bad_request(f"only assistant messages carry tool_calls, not {message.role!r} ones", param=f"messages[{i}].tool_calls")
            calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in message.tool_calls)
        if message.role == "tool" and message.tool_call_id is None:
            raise bad_request("a tool message needs tool_call_id: the id of the call it answers", param=f"messages[{i}].tool_call_id")
        if text is None and not calls:
            raise bad_request(f"messages[{i}] has no content (only an assistant message with tool_calls may leave it null)", param=f"messages[{i}].content")
        role = "system" if message.role == "developer" else message.role
        out.append(ChatMessage(role=role, content=text, tool_calls=calls, tool_call_id=message.tool_call_id, name=message.name))
    return tuple(out)


def _json_text(value: dict[str, Any] | str, param: str) -> str:
    """A JSON Schema given as an object (or, as vLLM also takes it, as JSON text) as compact JSON text."""
    if isinstance(value, str):
        try:
            value = msgspec.json.decode(value)
        except msgspec.DecodeError:
            raise bad_request(f"{param} is not valid JSON", param=param) from None
        if not isinstance(value, dict):
            raise bad_request(f"{param} must be a JSON Schema object", param=param)
    return msgspec.json.encode(value).decode()


_VLLM_KINDS = ("json", "regex", "choice", "grammar")  # vLLM's guided_<kind> and structured_outputs.<kind>


def _vllm_constraint(kind: str, value: Any, param: str) -> OutputConstraint:
    if kind == "json":
        return OutputConstraint("json_schema", _json_text(value, param), param)
    if kind == "choice":
        return OutputConstraint("choice", msgspec.json.encode(value).decode(), param)
    return OutputConstraint("regex" if kind == "regex" else "gbnf", value, param)


def output_constraint(req: s.ChatCompletionRequest) -> OutputConstraint | None:
    """The one structured-output request among OpenAI's response_format and the extensions
    llama-server (grammar, json_schema) and vLLM (structured_outputs, guided_*) take."""
    found: list[OutputConstraint] = []
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        found.append(OutputConstraint("json_object", "", "response_format"))
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise bad_request('response_format of type "json_schema" needs a json_schema object (name, schema)', param="response_format.json_schema")
        if fmt.json_schema.schema is None:
            found.append(OutputConstraint("json_object", "", "response_format", name=fmt.json_schema.name))
        else:
            found.append(OutputConstraint("json_schema", _json_text(fmt.json_schema.schema, "response_format"), "response_format", name=fmt.json_schema.name))
    if req.grammar is not None:
        found.append(OutputConstraint("gbnf", req.grammar, "grammar"))
    if req.json_schema is not None:
        found.append(OutputConstraint("json_schema", _json_text(req.json_schema, "json_schema"), "json_schema"))
    for kind in _VLLM_KINDS:
        value = getattr(req, f"guided_{kind}")
        if value is not None:
            found.append(_vllm_constraint(kind, value, f"guided_{kind}"))
    so = req.structured_outputs
    if so is not None:
        given = [name for name in (*_VLLM_KINDS, "json_object") if getattr(so, name) not in (None, False)]
        if len(given) != 1:
            raise bad_request(f"structured_outputs takes exactly one of json, regex, choice, grammar, json_object; got {given or 'none'}", param="structured_outputs")
        if given[0] == "json_object":
            found.append(OutputConstraint("json_object", "", "structured_outputs.json_object"))
        else:
            found.append(_vllm_constraint(given[0], getattr(so, given[0]), f"structured_outputs.{given[0]}"))
    if len(found) > 1:
        raise bad_request(f"give one structured-output constraint, not several ({', '.join(c.param for c in found)})", param=found[1].param)
    return found[0] if found else None


def tool_settings(req: s.ChatCompletionRequest) -> tuple[tuple[ToolSpec, ...], str]:
    """The request's tools and its tool choice ("none", "auto", "required" or a function's name)."""
    if req.functions is not None or req.function_call is not None:
        raise unsupported("the deprecated functions / function_call (send tools and tool_choice)", "functions" if req.functions is not None else "function_call")
    tools = req.tools or []
    names = [t.function.name for t in tools]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise bad_request(f"tools has two functions named {duplicate!r}", param="tools")
    choice = req.tool_choice
    if choice is not None and not tools and choice != "none":
        raise bad_request("tool_choice is only allowed when tools are given", param="tool_choice")
    if isinstance(choice, s.NamedToolChoice):
        if choice.function.name not in names:
            raise bad_request(f"tool_choice names function {choice.function.name!r}, which is not among tools ({', '.join(names)})", param="tool_choice")
        choice_name = choice.function.name
    else:
        choice_name = choice or ("auto" if tools else "none")
    for i, t in enumerate(tools):
        if t.function.parameters:
            check_json_schema(t.function.parameters, f"tools[{i}].function.parameters")
    specs = tuple(
        ToolSpec(t.function.name, t.function.description or "", t.function.parameters or {"type": "object", "properties": {}}, bool(t.function.strict))
        for t in tools
    )
    return specs, choice_name



def chat_plan(req: s.ChatCompletionRequest, meta: RequestMeta) -> GenerationPlan:
    _refuse_common(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    tools, tool_choice = tool_settings(req)
    constraint = output_constraint(req)
    messages = _chat_messages(req.messages)
    max_tokens = req.max_completion_tokens or req.max_tokens or CHAT_DEFAULT_MAX_TOKENS
    n = req.n or 1
    params = sampling_params(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None)
    metas = metas_for(meta, n)
    parallel = True if req.parallel_tool_calls is None else req.parallel_tool_calls
    return GenerationPlan(
        kind="chat", model=req.model,
        requests=[
            GenerationRequest(
                request_id=m.request_id, sampling=params, messages=messages, constraint=constraint,
                tools=tools if tool_choice != "none" else (), tool_choice=tool_choice, parallel_tool_calls=parallel,
            )
            for m in metas
        ],
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
