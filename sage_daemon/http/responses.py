"""OpenAI's Responses API (`POST /v1/responses`) as translation only, with no I/O.

In: the request body as msgspec Structs (bounded as http/schemas.py's), refused by name where it
asks for what a local server cannot give (built-in tools, images and files, background mode,
prompt templates, the Conversations API). `responses_plan` turns it, with the stored history of
`previous_response_id` (the route resolves it through http/response_store.py), into the same
`GenerationPlan` a chat completion makes: one chat request.

Out: `ResponseReply` assembles the `response` object of a request that did not ask to stream;
`ResponseStream` turns the same chunks into the typed SSE events of a streamed one
(`event: TYPE\\ndata: {json}\\n\\n`, each with a `sequence_number` counting from 0). Both share
one builder, so a stream's final `response.completed` is the object a plain reply would have
been. Output items appear in the order the model produced them: a reasoning item, a message
item, function_call items (one per tool call).

What a response leaves behind for `previous_response_id` is `stored_conversation`: the
conversation without the instructions (OpenAI does not carry those over) plus the reply as one
assistant message with its tool calls. Reasoning is not kept (the chat door does not send it
back to the model either).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from sage_daemon.control.api import RequestMeta
from sage_daemon.engines.base import ChatMessage, InvalidRequestError, GenerationChunk, GenerationRequest, OutputConstraint, SamplingParams, TokenLogprob, ToolCall, ToolSpec
from sage_daemon.engines.grammar import check_json_schema
from sage_daemon.http.errors import ApiError, bad_request, from_exception, unsupported
from sage_daemon.http.schemas import (
    ErrorResponse,
    FunctionName,
    JsonSchemaObject,
    MaxTokens,
    Metadata,
    ModelName,
    Temperature,
    TopLogprobs,
    TopP,
)
from sage_daemon.http.translate import CHAT_DEFAULT_MAX_TOKENS, GenerationPlan

RESPONSES_DEFAULT_MAX_TOKENS = CHAT_DEFAULT_MAX_TOKENS  # OpenAI's default is "until the context ends"; the chat door's is kinder to a shared CPU

# -- the request ------------------------------------------------------------------------------

ItemText = Annotated[str, Meta(max_length=4_000_000)]
ShortText = Annotated[str, Meta(max_length=256)]
TypeName = Annotated[str, Meta(max_length=64)]
ItemId = Annotated[str, Meta(min_length=1, max_length=256)]
MAX_INPUT_ITEMS = 4096
MAX_PARTS = 1024


class ContentPart(Struct):
    """A part of a message's content: `input_text`, `output_text` or `refusal` (images, files
    and audio are declared by their type only, to be refused by name)."""

    type: TypeName
    text: ItemText | None = None
    refusal: ItemText | None = None


PartList = Annotated[list[ContentPart], Meta(max_length=MAX_PARTS)]


class InputItem(Struct):
    """One item of `input`, all kinds in one Struct: the SDK lets a message item leave out
    `type`, which a tagged union could not. `message` (role, content), `function_call` (call_id,
    name, arguments), `function_call_output` (call_id, output) and `reasoning` (ignored: earlier
    reasoning is not sent back to the model) are taken; other kinds are refused by name."""

    type: TypeName = "message"
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: ItemText | PartList | None = None
    id: ShortText | None = None
    status: TypeName | None = None
    call_id: ItemId | None = None
    name: ShortText | None = None
    arguments: ItemText | None = None
    output: ItemText | PartList | None = None


class ToolIn(Struct):
    """A tool: only `function` tools are served; the built-in ones are declared by type to be refused."""

    type: TypeName
    name: ShortText | None = None
    description: Annotated[str, Meta(max_length=100_000)] | None = None
    parameters: JsonSchemaObject | None = None
    strict: bool | None = None


class ToolChoiceIn(Struct):
    type: TypeName
    name: ShortText | None = None


class TextFormat(Struct, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: FunctionName | None = None
    schema: JsonSchemaObject | None = None
    strict: bool | None = None
    description: Annotated[str, Meta(max_length=100_000)] | None = None


class TextConfig(Struct):
    format: TextFormat = msgspec.field(default_factory=lambda: TextFormat("text"))
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(Struct):
    """Accepted and echoed; a local model reasons as its chat template says, whatever the effort."""

    effort: TypeName | None = None
    summary: TypeName | None = None


IncludeItem = Annotated[str, Meta(max_length=128)]


class ResponsesRequest(Struct, kw_only=True):
    model: ModelName
    input: ItemText | Annotated[list[InputItem], Meta(max_length=MAX_INPUT_ITEMS)] | None = None
    instructions: ItemText | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: TopLogprobs | None = None  # with include ["message.output_text.logprobs"]
    tools: Annotated[list[ToolIn], Meta(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceIn | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool | None = None
    store: bool | None = None  # None: true, as OpenAI's
    previous_response_id: ItemId | None = None
    metadata: Metadata | None = None
    user: ShortText | None = None
    reasoning: ReasoningConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: Annotated[list[IncludeItem], Meta(max_length=32)] | None = None
    service_tier: TypeName | None = None  # accepted, ignored
    # Known but not supported: refused by name when set.
    background: bool | None = None
    conversation: Any | None = None
    prompt: Any | None = None


# What `include` may ask for. Logprobs are given; reasoning comes as plain `reasoning_text`
# content, so there is nothing encrypted to add (clients that keep no state ask for it anyway).
INCLUDE_LOGPROBS = "message.output_text.logprobs"
INCLUDE_OK = frozenset({INCLUDE_LOGPROBS, "reasoning.encrypted_content"})

BUILTIN_TOOLS = {
    "web_search": "web search", "web_search_preview": "web search", "web_search_2025_08_26": "web search",
    "web_search_preview_2025_03_11": "web search", "file_search": "file search", "computer": "computer use",
    "computer_use": "computer use", "computer_use_preview": "computer use", "code_interpreter": "the code interpreter",
    "image_generation": "image generation", "mcp": "remote MCP servers", "local_shell": "the local shell",
    "shell": "the shell tool", "apply_patch": "apply_patch", "custom": "custom (free-form) tools",
    "tool_search": "tool search", "namespace": "tool namespaces", "programmatic_tool_calling": "programmatic tool calling",
}

_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def check_request(req: ResponsesRequest) -> None:
    """Refuse, naming the field, what the schema lets through and this server cannot do."""
    if req.background:
        raise unsupported("background mode (background: true)", "background")
    if req.conversation is not None:
        raise unsupported("conversation (the Conversations API; chain responses with previous_response_id)", "conversation")
    if req.prompt is not None:
        raise unsupported("prompt (stored prompt templates)", "prompt")
    for i, item in enumerate(req.include or []):
        if item not in INCLUDE_OK:
            raise bad_request(f"include item {item!r} is not supported: this server can include {', '.join(sorted(INCLUDE_OK))}", param=f"include[{i}]")
    if req.top_logprobs is not None and INCLUDE_LOGPROBS not in (req.include or []):
        raise bad_request(f'top_logprobs needs include ["{INCLUDE_LOGPROBS}"]', param="top_logprobs")


# -- input items → chat messages ----------------------------------------------------------------


def _parts_text(parts: list[ContentPart], where: str) -> str:
    out = []
    for j, part in enumerate(parts):
        if part.type in ("input_text", "output_text", "text", "reasoning_text"):
            out.append(part.text or "")
        elif part.type == "refusal":
            out.append(part.refusal or part.text or "")
        else:
            what = {"input_image": "images", "input_file": "files", "input_audio": "audio"}.get(part.type, repr(part.type) + " parts")
            raise bad_request(f"content part type {part.type!r} is not supported: this server takes text only, not {what}", param=f"{where}[{j}].type")
    return "\n".join(out)


def _content(value: str | list[ContentPart] | None, where: str) -> str:
    if value is None:
        raise bad_request(f"{where} is required", param=where)
    return value if isinstance(value, str) else _parts_text(value, where)


def conversation(req: ResponsesRequest, history: tuple[ChatMessage, ...] | list[ChatMessage] = ()) -> tuple[ChatMessage, ...]:
    """`history` (the stored conversation of previous_response_id), then the input items as chat
    messages: a function_call joins the assistant message before it (consecutive calls are one
    assistant turn), a function_call_output is a tool message. Instructions are not in it."""
    out = list(history)
    items: list[InputItem] = [InputItem(role="user", content=req.input)] if isinstance(req.input, str) else (req.input or [])
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if item.type == "message":
            if item.role is None:
                raise bad_request("a message item needs a role (user, assistant, system or developer)", param=f"{where}.role")
            role = "system" if item.role == "developer" else item.role
            out.append(ChatMessage(role, _content(item.content, f"{where}.content")))
        elif item.type == "function_call":
            for field in ("call_id", "name", "arguments"):
                if getattr(item, field) is None:
                    raise bad_request(f"a function_call item needs {field}", param=f"{where}.{field}")
            assert item.call_id is not None and item.name is not None and item.arguments is not None
            call = ToolCall(item.call_id, item.name, item.arguments)
            if out and out[-1].role == "assistant":
                last = out[-1]
                out[-1] = ChatMessage("assistant", last.content or None, (*last.tool_calls, call))
            else:
                out.append(ChatMessage("assistant", None, (call,)))
        elif item.type == "function_call_output":
            if item.call_id is None:
                raise bad_request("a function_call_output item needs call_id: the call it answers", param=f"{where}.call_id")
            out.append(ChatMessage("tool", _content(item.output, f"{where}.output"), tool_call_id=item.call_id))
        elif item.type == "reasoning":
            continue  # earlier reasoning is not sent back to the model
        elif item.type == "item_reference":
            raise unsupported("item_reference input items (send the items, or chain with previous_response_id)", f"{where}.type")
        else:
            raise bad_request(f"input item type {item.type!r} is not supported: this server takes message, function_call, function_call_output and reasoning items", param=f"{where}.type")
    return tuple(out)


# -- tools and structured output ----------------------------------------------------------------


def response_tools(req: ResponsesRequest) -> tuple[tuple[ToolSpec, ...], str]:
    """The function tools (strict unless told otherwise, as OpenAI's Responses API defaults) and
    the tool choice: "none", "auto", "required" or the one function's name."""
    tools = req.tools or []
    names: list[str] = []
    for i, t in enumerate(tools):
        if t.type != "function":
            what = BUILTIN_TOOLS.get(t.type)
            raise bad_request(
                f"tool type {t.type!r} is not supported{' (' + what + ' is a hosted OpenAI tool)' if what else ''}: this server serves function tools only",
                param=f"tools[{i}].type",
            )
        if t.name is None or not _FUNCTION_NAME.match(t.name):
            raise bad_request("a function tool needs a name of a-z, A-Z, 0-9, underscores and dashes (at most 64)", param=f"tools[{i}].name")
        if t.name in names:
            raise bad_request(f"tools has two functions named {t.name!r}", param="tools")
        names.append(t.name)
        if t.parameters:
            try:
                check_json_schema(t.parameters, f"tools[{i}].parameters")
            except InvalidRequestError as exc:
                raise from_exception(exc) or exc from None
    choice = req.tool_choice
    if isinstance(choice, ToolChoiceIn):
        if choice.type != "function":
            raise bad_request(f"tool_choice type {choice.type!r} is not supported: name a function ({{\"type\": \"function\", \"name\": ...}}) or give none, auto or required", param="tool_choice")
        if choice.name not in names:
            raise bad_request(f"tool_choice names function {choice.name!r}, which is not among tools ({', '.join(names) or 'none given'})", param="tool_choice")
        choice_name = choice.name
    else:
        choice_name = choice or "auto"
        if choice_name == "required" and not tools:
            raise bad_request('tool_choice "required" needs tools', param="tool_choice")
    specs = tuple(
        ToolSpec(t.name or "", t.description or "", t.parameters or {"type": "object", "properties": {}}, True if t.strict is None else t.strict)
        for t in tools
    )
    if not specs:
        choice_name = "none"
    return specs, choice_name


def text_constraint(req: ResponsesRequest) -> OutputConstraint | None:
    """`text.format` as the constraint of the reply's text."""
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return OutputConstraint("json_object", "", "text.format")
    if fmt.name is None:
        raise bad_request('text.format of type "json_schema" needs a name', param="text.format.name")
    if fmt.schema is None:
        raise bad_request('text.format of type "json_schema" needs a schema', param="text.format.schema")
    return OutputConstraint("json_schema", msgspec.json.encode(fmt.schema).decode(), "text.format", name=fmt.name)


def responses_plan(req: ResponsesRequest, meta: RequestMeta, history: tuple[ChatMessage, ...] | list[ChatMessage] = ()) -> GenerationPlan:
    """The one chat generation a Responses request asks for: the instructions as a system
    message, then `conversation(req, history)`."""
    check_request(req)
    tools, tool_choice = response_tools(req)
    constraint = text_constraint(req)
    messages = conversation(req, history)
    if not messages:
        raise bad_request("input is empty: give a string or at least one message item", param="input")
    if req.instructions:
        messages = (ChatMessage("system", req.instructions), *messages)
    logprobs = (req.top_logprobs or 0) if INCLUDE_LOGPROBS in (req.include or []) else None
    params = SamplingParams(
        max_tokens=req.max_output_tokens or RESPONSES_DEFAULT_MAX_TOKENS,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        logprobs=logprobs,
    )
    request = GenerationRequest(
        request_id=meta.request_id, sampling=params, messages=messages, constraint=constraint,
        tools=tools if tool_choice != "none" else (), tool_choice=tool_choice,
        parallel_tool_calls=True if req.parallel_tool_calls is None else req.parallel_tool_calls,
    )
    return GenerationPlan(
        kind="chat", model=req.model, requests=[request], metas=[meta], prompt_of=[0],
        stream=bool(req.stream), include_usage=False, param_hint="input",
    )


def new_response_id() -> str:
    """A response id no client can choose (request ids may come from a header)."""
    return f"resp_{uuid.uuid4().hex}"


# -- the response object --------------------------------------------------------------------------


class TopLogprobOut(Struct):
    token: str
    bytes: list[int]
    logprob: float


class TextLogprob(Struct):
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[TopLogprobOut]


class OutputText(Struct, tag_field="type", tag="output_text"):
    text: str
    annotations: list[Any] = []
    logprobs: list[TextLogprob] = []


class ReasoningText(Struct, tag_field="type", tag="reasoning_text"):
    text: str


class OutputMessage(Struct, tag_field="type", tag="message"):
    id: str
    status: str
    content: list[OutputText]
    role: Literal["assistant"] = "assistant"


class ReasoningItem(Struct, tag_field="type", tag="reasoning"):
    id: str
    status: str
    content: list[ReasoningText]
    summary: list[Any] = []


class FunctionCallItem(Struct, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


OutputItem = OutputMessage | ReasoningItem | FunctionCallItem


class InputTokensDetails(Struct):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(Struct):
    reasoning_tokens: int = 0


class ResponseUsage(Struct):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails


class ResponseError(Struct):
    code: str  # one of OpenAI's: server_error, rate_limit_exceeded, invalid_prompt
    message: str
    param: str | None = None
    type: str | None = None


class IncompleteDetails(Struct):
    reason: str


class FunctionToolOut(Struct):
    name: str
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool
    type: Literal["function"] = "function"


class ToolChoiceFunctionOut(Struct):
    name: str
    type: Literal["function"] = "function"


class ResponseEcho(Struct, kw_only=True):
    """The request's settings a response object repeats."""

    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_logprobs: int | None = None
    tools: list[FunctionToolOut] = []
    tool_choice: str | ToolChoiceFunctionOut = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, str] = {}
    user: str | None = None
    reasoning: ReasoningConfig = msgspec.field(default_factory=ReasoningConfig)
    truncation: str = "disabled"


def response_echo(req: ResponsesRequest) -> ResponseEcho:
    choice: str | ToolChoiceFunctionOut = "auto"
    if isinstance(req.tool_choice, ToolChoiceIn):
        choice = ToolChoiceFunctionOut(req.tool_choice.name or "")
    elif req.tool_choice is not None:
        choice = req.tool_choice
    return ResponseEcho(
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_logprobs=req.top_logprobs,
        tools=[FunctionToolOut(t.name or "", t.description, t.parameters, True if t.strict is None else t.strict) for t in req.tools or [] if t.type == "function"],
        tool_choice=choice,
        parallel_tool_calls=True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        text=req.text or TextConfig(),
        previous_response_id=req.previous_response_id,
        store=req.store is not False,
        metadata=dict(req.metadata or {}),
        user=req.user,
        reasoning=req.reasoning or ReasoningConfig(),
        truncation=req.truncation or "disabled",
    )


def wants_logprobs(req: ResponsesRequest) -> bool:
    return INCLUDE_LOGPROBS in (req.include or [])


class Response(Struct, kw_only=True):
    """OpenAI's `response` object."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: str
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem] = []
    usage: ResponseUsage | None = None
    background: bool = False
    service_tier: str = "default"
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_logprobs: int | None = None
    tools: list[FunctionToolOut] = []
    tool_choice: str | ToolChoiceFunctionOut = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, str] = {}
    user: str | None = None
    reasoning: ReasoningConfig = msgspec.field(default_factory=ReasoningConfig)
    truncation: str = "disabled"


class ResponseDeleted(Struct):
    """The reply of `DELETE /v1/responses/{id}`."""

    id: str
    object: Literal["response"] = "response"  # as OpenAI answers it
    deleted: bool = True


# -- stream events ---------------------------------------------------------------------------------


class _Event(Struct, kw_only=True, tag_field="type"):
    sequence_number: int = 0


class _ResponseEvent(_Event, kw_only=True):
    response: Response


class ResponseCreated(_ResponseEvent, kw_only=True, tag="response.created"):
    pass


class ResponseInProgress(_ResponseEvent, kw_only=True, tag="response.in_progress"):
    pass


class ResponseCompleted(_ResponseEvent, kw_only=True, tag="response.completed"):
    pass


class ResponseIncomplete(_ResponseEvent, kw_only=True, tag="response.incomplete"):
    pass


class ResponseFailed(_ResponseEvent, kw_only=True, tag="response.failed"):
    pass


class OutputItemAdded(_Event, kw_only=True, tag="response.output_item.added"):
    output_index: int
    item: OutputItem


class OutputItemDone(_Event, kw_only=True, tag="response.output_item.done"):
    output_index: int
    item: OutputItem


class ContentPartAdded(_Event, kw_only=True, tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class ContentPartDone(_Event, kw_only=True, tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class OutputTextDelta(_Event, kw_only=True, tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[TextLogprob] = []


class OutputTextDone(_Event, kw_only=True, tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[TextLogprob] = []


class ReasoningTextDelta(_Event, kw_only=True, tag="response.reasoning_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningTextDone(_Event, kw_only=True, tag="response.reasoning_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str


class FunctionCallArgumentsDelta(_Event, kw_only=True, tag="response.function_call_arguments.delta"):
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(_Event, kw_only=True, tag="response.function_call_arguments.done"):
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(_Event, kw_only=True, tag="error"):
    code: str | None
    message: str
    param: str | None = None


_encoder = msgspec.json.Encoder()


def sse_event(ev: _Event) -> bytes:
    """`event: TYPE\\ndata: {json}\\n\\n` (JSON never holds a raw newline)."""
    tag = ev.__struct_config__.tag
    assert isinstance(tag, str)
    return b"event: " + tag.encode() + b"\ndata: " + _encoder.encode(ev) + b"\n\n"


# -- building the output --------------------------------------------------------------------------


def _logprobs_out(entries: tuple[TokenLogprob, ...]) -> list[TextLogprob]:
    return [TextLogprob(e.token, list(e.bytes), e.logprob, [TopLogprobOut(t.token, list(t.bytes), t.logprob) for t in e.top]) for e in entries]


class _Item:
    """The state of one output item while it is built."""

    def __init__(self, kind: str, id: str, output_index: int, call_id: str = "", name: str = ""):  # noqa: A002
        self.kind = kind  # message | reasoning | function_call
        self.id = id
        self.output_index = output_index
        self.text = ""  # message and reasoning text, or a call's arguments
        self.logprobs: list[TextLogprob] = []
        self.call_id = call_id
        self.name = name
        self.status = "in_progress"

    def out(self) -> OutputItem:
        if self.kind == "message":
            content = [OutputText(self.text, logprobs=self.logprobs)] if self.status != "in_progress" else []
            return OutputMessage(self.id, self.status, content)
        if self.kind == "reasoning":
            return ReasoningItem(self.id, self.status, [ReasoningText(self.text)] if self.status != "in_progress" else [])
        return FunctionCallItem(self.id, self.call_id, self.name, self.text if self.status != "in_progress" else "", self.status)


def _error_code(error: ErrorResponse) -> str:
    detail = error.error
    if detail.type == "rate_limit_error":
        return "rate_limit_exceeded"
    if detail.type == "invalid_request_error":
        return "invalid_prompt"
    return "server_error"


class _Builder:
    """Output items from generation chunks; `events` gathers what a stream writes (a reply
    ignores it). One request, so `feed`'s index is always 0."""

    def __init__(self, *, id: str, model: str, created_at: int, echo: ResponseEcho, logprobs: bool = False):  # noqa: A002
        self.id = id
        self.model = model
        self.created_at = created_at
        self.echo = echo
        self.logprobs = logprobs
        self._base = id.removeprefix("resp_")
        self.items: list[_Item] = []
        self._current: _Item | None = None  # the open message or reasoning item
        self._calls: dict[int, _Item] = {}  # the engine's call index → its item
        self.events: list[_Event] = []
        self.seq = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        self.finished = False
        self.reason: str | None = None

    def _emit(self, ev: _Event) -> None:
        ev.sequence_number = self.seq
        self.seq += 1
        self.events.append(ev)

    def _open(self, kind: str, call_id: str = "", name: str = "") -> _Item:
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = _Item(kind, f"{prefix}_{self._base}_{len(self.items)}", len(self.items), call_id, name)
        self.items.append(item)
        self._emit(OutputItemAdded(output_index=item.output_index, item=item.out()))
        if kind == "message":
            self._emit(ContentPartAdded(item_id=item.id, output_index=item.output_index, content_index=0, part=OutputText("")))
        elif kind == "reasoning":
            self._emit(ContentPartAdded(item_id=item.id, output_index=item.output_index, content_index=0, part=ReasoningText("")))
        return item

    def _close(self, item: _Item) -> None:
        if item.status != "in_progress":
            return
        item.status = "incomplete" if self.reason == "length" else "completed"
        iid, oi = item.id, item.output_index
        if item.kind == "message":
            self._emit(OutputTextDone(item_id=iid, output_index=oi, content_index=0, text=item.text, logprobs=item.logprobs))
            self._emit(ContentPartDone(item_id=iid, output_index=oi, content_index=0, part=OutputText(item.text, logprobs=item.logprobs)))
        elif item.kind == "reasoning":
            self._emit(ReasoningTextDone(item_id=iid, output_index=oi, content_index=0, text=item.text))
            self._emit(ContentPartDone(item_id=iid, output_index=oi, content_index=0, part=ReasoningText(item.text)))
        else:
            self._emit(FunctionCallArgumentsDone(item_id=iid, output_index=oi, name=item.name, arguments=item.text))
        self._emit(OutputItemDone(output_index=item.output_index, item=item.out()))

    def _text_item(self, kind: str) -> _Item:
        current = self._current
        if current is None or current.kind != kind:
            if current is not None:
                self._close(current)
            current = self._current = self._open(kind)
        return current

    def feed(self, index: int, chunk: GenerationChunk) -> None:
        if self.finished:
            return
        if chunk.prompt_tokens:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.cached_prompt_tokens:
            self.cached_tokens = chunk.cached_prompt_tokens
        if chunk.completion_tokens:
            self.completion_tokens = chunk.completion_tokens
        elif chunk.token_ids:
            self.completion_tokens += len(chunk.token_ids)
        if chunk.reasoning:
            item = self._text_item("reasoning")
            item.text += chunk.reasoning
            if not chunk.text:
                self.reasoning_tokens += len(chunk.token_ids)
            self._emit(ReasoningTextDelta(item_id=item.id, output_index=item.output_index, content_index=0, delta=chunk.reasoning))
        if chunk.text:
            item = self._text_item("message")
            item.text += chunk.text
            logprobs = _logprobs_out(chunk.logprobs) if self.logprobs else []
            item.logprobs += logprobs
            self._emit(OutputTextDelta(item_id=item.id, output_index=item.output_index, content_index=0, delta=chunk.text, logprobs=logprobs))
        for d in chunk.tool_calls:
            call = self._calls.get(d.index)
            if call is None:
                if self._current is not None:
                    self._close(self._current)
                    self._current = None
                call = self._calls[d.index] = self._open("function_call", d.id or f"call_{self._base}_{d.index}", d.name or "")
            elif d.name and not call.name:
                call.name = d.name
            if d.arguments:
                call.text += d.arguments
                self._emit(FunctionCallArgumentsDelta(item_id=call.id, output_index=call.output_index, delta=d.arguments))
        if chunk.finish_reason is not None:
            self.finished = True
            self.reason = chunk.finish_reason
            self.close_all()

    def close_all(self) -> None:
        self._current = None
        for item in self.items:
            self._close(item)

    # -- the response object --

    def usage(self) -> ResponseUsage:
        return ResponseUsage(
            self.prompt_tokens, self.completion_tokens, self.prompt_tokens + self.completion_tokens,
            InputTokensDetails(self.cached_tokens), OutputTokensDetails(min(self.reasoning_tokens, self.completion_tokens)),
        )

    def response(self, status: str, *, error: ResponseError | None = None, now: float | None = None) -> Response:
        """The response object as it stands: `status` "in_progress" (no output, no usage yet),
        "completed" / "incomplete" (from the finish reason) or "failed"."""
        echo = self.echo
        done = status != "in_progress"
        incomplete = IncompleteDetails("max_output_tokens") if status == "incomplete" else None
        return Response(
            id=self.id, created_at=self.created_at, status=status, model=self.model,
            completed_at=int(time.time() if now is None else now) if status in ("completed", "incomplete") else None,
            error=error, incomplete_details=incomplete,
            output=[item.out() for item in self.items] if done else [],
            usage=self.usage() if done else None,
            instructions=echo.instructions, max_output_tokens=echo.max_output_tokens, temperature=echo.temperature, top_p=echo.top_p,
            top_logprobs=echo.top_logprobs, tools=echo.tools, tool_choice=echo.tool_choice, parallel_tool_calls=echo.parallel_tool_calls,
            text=echo.text, previous_response_id=echo.previous_response_id, store=echo.store, metadata=echo.metadata, user=echo.user,
            reasoning=echo.reasoning, truncation=echo.truncation,
        )

    def final_status(self) -> str:
        return "incomplete" if self.reason == "length" else "completed"

    def output_messages(self) -> tuple[ChatMessage, ...]:
        """The reply as the conversation keeps it: one assistant message, its text and tool calls."""
        text = "".join(item.text for item in self.items if item.kind == "message")
        calls = tuple(ToolCall(item.call_id, item.name, item.text) for item in self.items if item.kind == "function_call")
        return (ChatMessage("assistant", text if text or not calls else None, calls),)


class ResponseReply:
    """The `response` object of a request that did not ask to stream, from its chunks."""

    def __init__(self, *, id: str, model: str, created_at: int, echo: ResponseEcho, logprobs: bool = False):  # noqa: A002
        self._builder = _Builder(id=id, model=model, created_at=created_at, echo=echo, logprobs=logprobs)

    def feed(self, index: int, chunk: GenerationChunk) -> None:
        self._builder.feed(index, chunk)
        self._builder.events.clear()

    def reply(self, now: float | None = None) -> Response:
        """The reply; a generation that never said why it ended ended as a stop."""
        b = self._builder
        b.close_all()
        b.events.clear()
        return b.response(b.final_status(), now=now)

    def output_messages(self) -> tuple[ChatMessage, ...]:
        return self._builder.output_messages()


class ResponseStream:
    """The SSE events of a streamed response: `start()`, `feed()` per chunk, then `end()` (or
    `error()`). After the end, `response()` is the final object (what the store keeps)."""

    def __init__(self, *, id: str, model: str, created_at: int, echo: ResponseEcho, logprobs: bool = False):  # noqa: A002
        self._builder = _Builder(id=id, model=model, created_at=created_at, echo=echo, logprobs=logprobs)
        self.started = False
        self.closed = False
        self._final: Response | None = None

    def _flush(self) -> bytes:
        out = b"".join(sse_event(ev) for ev in self._builder.events)
        self._builder.events.clear()
        return out

    def start(self) -> bytes:
        """response.created, then response.in_progress."""
        if self.started or self.closed:
            return b""
        self.started = True
        b = self._builder
        b._emit(ResponseCreated(response=b.response("in_progress")))
        b._emit(ResponseInProgress(response=b.response("in_progress")))
        return self._flush()

    def feed(self, index: int, chunk: GenerationChunk) -> bytes:
        if self.closed:
            return b""
        out = self.start()
        self._builder.feed(index, chunk)
        return out + self._flush()

    def end(self, now: float | None = None) -> bytes:
        """The done events of what is still open, then response.completed or response.incomplete."""
        if self.closed:
            return b""
        out = self.start()
        self.closed = True
        b = self._builder
        b.close_all()
        status = b.final_status()
        self._final = b.response(status, now=now)
        b._emit(ResponseIncomplete(response=self._final) if status == "incomplete" else ResponseCompleted(response=self._final))
        return out + self._flush()

    def error(self, error: ErrorResponse | ApiError) -> bytes:
        """After the stream started: response.failed, carrying the error and the output so far
        (its open items as incomplete). Before: one `error` event. The stream ends here."""
        if self.closed:
            return b""
        self.closed = True
        body = error.body() if isinstance(error, ApiError) else error
        b = self._builder
        if not self.started:
            b._emit(ErrorEvent(code=body.error.code, message=body.error.message, param=body.error.param))
            return self._flush()
        for item in b.items:
            if item.status == "in_progress":
                item.status = "incomplete"
        failure = ResponseError(_error_code(body), body.error.message, body.error.param, body.error.type)
        self._final = b.response("failed", error=failure)
        b._emit(ResponseFailed(response=self._final))
        return self._flush()

    def response(self) -> Response | None:
        """The final response object once the stream ended (None before)."""
        return self._final

    def output_messages(self) -> tuple[ChatMessage, ...]:
        return self._builder.output_messages()


def stored_conversation(req: ResponsesRequest, history: tuple[ChatMessage, ...] | list[ChatMessage], output: ResponseReply | ResponseStream) -> list[ChatMessage]:
    """What `previous_response_id` will rebuild: the history, this request's input items and the
    reply (without instructions, which OpenAI does not carry over)."""
    return [*conversation(req, history), *output.output_messages()]
