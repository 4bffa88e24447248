"""Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`), with no I/O.

What translate.py and sse.py are for chat completions, this module is for Anthropic's door:

- the request bodies as msgspec Structs (`MessagesRequest`, `CountTokensRequest`), bounded as
  schemas.py bounds the OpenAI ones. Unknown fields are ignored (`service_tier`, `container`,
  `cache_control` on blocks...), as the SDKs send fields a server may not know; fields we know
  and cannot honour are refused by name: image, document and other non-text blocks, server
  tools (`tools[i].type` other than "custom"), `mcp_servers`. `thinking` is accepted and not
  acted on (a reasoning model thinks as its chat template says);
- `messages_plan`: a decoded request → the `GenerationPlan` of translate.py (kind "chat");
  `count_tokens_messages`: what count_tokens renders and tokenizes (`Conversation`);
- `MessageReply` / `MessageStream`: generation chunks → Anthropic's `Message` object, or the bytes
  of its server-sent events (`event: NAME\\ndata: {...}\\n\\n`);
- `error_body`: Anthropic's error object for a status.

The mapping, in short:

- `system` (a string or text blocks) is a first ChatMessage("system"); messages with role
  "system" (newer SDKs have them) become system messages where they stand. Consecutive turns of
  one role are merged into one turn first, as Anthropic does. Text blocks of a turn are joined
  with "\\n"; thinking and redacted_thinking blocks sent back are dropped (the model does not
  read earlier reasoning, as the chat door drops `reasoning_content`).
- An assistant turn's `tool_use` blocks are the ChatMessage's `tool_calls` (arguments: the
  `input` as compact JSON). A user turn's `tool_result` blocks are ChatMessage("tool") messages,
  in order, before the turn's text; `name` is the tool's, looked up from the earlier tool_use
  with that id. `is_error: true` results read "Error: <content>" (the chat template has no
  other way to tell the model).
- `tool_choice`: auto → "auto", any → "required", tool → its name (400 unless among tools),
  none → "none"; `disable_parallel_tool_use` → parallel_tool_calls false.
- `output_config.format` (a JSON Schema) → a json_schema OutputConstraint.
- Replies: finish_reason stop → "end_turn" ("tool_use" when the reply holds tool_use blocks),
  length → "max_tokens", tool_calls → "tool_use", anything else → "end_turn". The engines do not
  say which stop string ended a generation, so "stop_sequence" is never reported:
  `stop_sequence` is always null and a stop string reads as "end_turn".
- `usage.input_tokens` is the whole prompt (cache reads are not split out); streams report it in
  `message_start` (as the first chunk knows it) and again, final, in `message_delta`.
- A tool call's arguments that are not a JSON object (a model's malformed output) are kept, not
  lost: the reply's `input` is {"arguments": "<the text>"}; an empty one is {}. Streams pass the
  fragments through as `input_json_delta`s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from sage_daemon.control.api import RequestMeta
from sage_daemon.core.errors import InvalidRequestError
from sage_daemon.engines.base import (
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    OutputConstraint,
    SamplingParams,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
)
from sage_daemon.engines.grammar import check_json_schema
from sage_daemon.http.errors import bad_request, unsupported
from sage_daemon.http.schemas import FunctionName, MaxTokens, ModelName, StopList, TopK, TopP
from sage_daemon.http.translate import GenerationPlan

__all__ = [
    "ContentBlockDeltaEvent", "ContentBlockStartEvent", "ContentBlockStopEvent", "Conversation", "CountTokensReply",
    "CountTokensRequest", "ErrorEvent", "Message", "MessageDeltaEvent", "MessageReply", "MessageStartEvent",
    "MessageStopEvent", "MessageStream", "MessagesRequest", "PingEvent", "Usage", "body_metadata",
    "count_tokens_messages", "error_body", "error_type", "message_id", "messages_plan", "sse_event", "stop_reason",
]

# -- request bounds -----------------------------------------------------------------------------

MAX_MESSAGES = 100_000  # Anthropic's documented limit per request
MAX_BLOCKS = 4096  # content blocks of one message, of a system prompt, of one tool_result
MAX_TOOLS = 128  # as the chat door
LongText = Annotated[str, Meta(max_length=4_000_000)]
ToolUseId = Annotated[str, Meta(min_length=1, max_length=256)]
Description = Annotated[str, Meta(max_length=1_000_000)]
AnthropicTemperature = Annotated[float, Meta(ge=0.0, le=1.0, description="0 to 1, as Anthropic's.")]
AnthropicMetadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)] | None],
    Meta(max_length=16, description="Anthropic's `user_id`; `priority` is read as X-SAGE-Priority."),
]


# -- request content blocks (tagged by "type") --------------------------------------------------


class TextBlockIn(Struct, tag_field="type", tag="text"):
    text: LongText


class ToolUseBlockIn(Struct, tag_field="type", tag="tool_use"):
    id: ToolUseId
    name: FunctionName
    input: dict[str, Any]


class ThinkingBlockIn(Struct, tag_field="type", tag="thinking"):
    """An earlier reply's reasoning, sent back: accepted and dropped."""

    thinking: LongText = ""
    signature: Annotated[str, Meta(max_length=1_000_000)] = ""


class RedactedThinkingBlockIn(Struct, tag_field="type", tag="redacted_thinking"):
    data: Annotated[str, Meta(max_length=1_000_000)] = ""


# Blocks Anthropic takes and this server cannot: decoded (their fields ignored) to be refused by name.
class ImageBlockIn(Struct, tag_field="type", tag="image"):
    pass


class DocumentBlockIn(Struct, tag_field="type", tag="document"):
    pass


class SearchResultBlockIn(Struct, tag_field="type", tag="search_result"):
    pass


class ServerToolUseBlockIn(Struct, tag_field="type", tag="server_tool_use"):
    pass


class WebSearchToolResultBlockIn(Struct, tag_field="type", tag="web_search_tool_result"):
    pass


class ContainerUploadBlockIn(Struct, tag_field="type", tag="container_upload"):
    pass


_UnsupportedBlock = ImageBlockIn | DocumentBlockIn | SearchResultBlockIn | ServerToolUseBlockIn | WebSearchToolResultBlockIn | ContainerUploadBlockIn
_UNSUPPORTED = (ImageBlockIn, DocumentBlockIn, SearchResultBlockIn, ServerToolUseBlockIn, WebSearchToolResultBlockIn, ContainerUploadBlockIn)

ToolResultContent = TextBlockIn | ImageBlockIn | DocumentBlockIn | SearchResultBlockIn


class ToolResultBlockIn(Struct, tag_field="type", tag="tool_result"):
    tool_use_id: ToolUseId
    content: LongText | Annotated[list[ToolResultContent], Meta(max_length=MAX_BLOCKS)] | None = None
    is_error: bool | None = None


ContentBlockIn = TextBlockIn | ToolUseBlockIn | ToolResultBlockIn | ThinkingBlockIn | RedactedThinkingBlockIn | _UnsupportedBlock


class MessageIn(Struct):
    role: Literal["user", "assistant", "system"]
    content: LongText | Annotated[list[ContentBlockIn], Meta(max_length=MAX_BLOCKS)]


# -- tools ----------------------------------------------------------------------------------------


class ToolIn(Struct, kw_only=True):
    """A client tool (`type` absent or "custom"); any other `type` names a server tool (refused)."""

    name: FunctionName
    type: Annotated[str, Meta(max_length=64)] | None = None
    description: Description | None = None
    input_schema: dict[str, Any] | None = None  # required for a client tool (checked by messages_plan)
    strict: bool | None = None


class ToolChoiceAuto(Struct, tag_field="type", tag="auto"):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(Struct, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(Struct, tag_field="type", tag="tool"):
    name: FunctionName
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(Struct, tag_field="type", tag="none"):
    pass


ToolChoiceIn = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class OutputFormat(Struct):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(Struct):
    format: OutputFormat | None = None
    effort: Annotated[str, Meta(max_length=16)] | None = None  # accepted, not acted on


# -- requests ---------------------------------------------------------------------------------------


class _ConversationFields(Struct, kw_only=True):
    """The fields `/v1/messages` and `/v1/messages/count_tokens` share."""

    model: ModelName
    messages: Annotated[list[MessageIn], Meta(min_length=1, max_length=MAX_MESSAGES)]
    system: LongText | Annotated[list[TextBlockIn], Meta(max_length=MAX_BLOCKS)] | None = None
    tools: Annotated[list[ToolIn], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoiceIn | None = None
    output_config: OutputConfig | None = None
    thinking: Any = None  # accepted, not acted on
    mcp_servers: Annotated[list[Any], Meta(max_length=64)] | None = None  # refused when not empty


class MessagesRequest(_ConversationFields, kw_only=True):
    """`POST /v1/messages`."""

    max_tokens: MaxTokens
    temperature: AnthropicTemperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    stop_sequences: StopList | None = None
    stream: bool | None = None
    metadata: AnthropicMetadata | None = None


class CountTokensRequest(_ConversationFields, kw_only=True):
    """`POST /v1/messages/count_tokens`: a conversation without sampling."""


class CountTokensReply(Struct):
    input_tokens: int


def body_metadata(req: MessagesRequest) -> dict[str, str] | None:
    """The request's metadata as translate.request_meta reads it (null values left out)."""
    if not req.metadata:
        return None
    return {key: value for key, value in req.metadata.items() if value is not None}


# -- request translation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    """What the model is shown: the messages, the tools it is offered and how it may use them."""

    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...]
    tool_choice: str  # none | auto | required | a tool's name
    parallel_tool_calls: bool
    constraint: OutputConstraint | None

    def request(self, request_id: str, sampling: SamplingParams | None = None) -> GenerationRequest:
        """The GenerationRequest of this conversation (count_tokens: `prepare` it and count its prompt_tokens)."""
        return GenerationRequest(
            request_id=request_id, sampling=sampling or SamplingParams(max_tokens=1), messages=self.messages, constraint=self.constraint,
            tools=self.tools, tool_choice=self.tool_choice, parallel_tool_calls=self.parallel_tool_calls,
        )


def _joined(blocks: list[TextBlockIn]) -> str:
    return "\n".join(b.text for b in blocks)


def _block_param(i: int, j: int | None) -> str:
    return f"messages[{i}].content" if j is None else f"messages[{i}].content[{j}]"


def _refuse_block(block: object, param: str) -> None:
    tag = type(block).__struct_config__.tag  # type: ignore[attr-defined]
    raise unsupported(f"content blocks of type {tag!r} (this server takes text, tool_use and tool_result blocks)", f"{param}.type")


def _tool_result_text(block: ToolResultBlockIn, param: str) -> str:
    content = block.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, TextBlockIn):
                _refuse_block(part, f"{param}.content[{k}]")
                continue  # unreachable: _refuse_block raises
            parts.append(part.text)
        text = "\n".join(parts)
    if block.is_error:
        return f"Error: {text}" if text else "Error"
    return text


_Located = tuple[int, int | None, object]  # (message index, block index or None for string content, block)


def _turns(messages: list[MessageIn]) -> list[tuple[str, int, list[_Located]]]:
    """The messages as turns (role, index of its first message, blocks): consecutive user (or
    assistant) messages merged, as Anthropic does."""
    turns: list[tuple[str, int, list[_Located]]] = []
    for i, message in enumerate(messages):
        blocks: list[_Located]
        if isinstance(message.content, str):
            blocks = [(i, None, TextBlockIn(message.content))]
        else:
            blocks = [(i, j, block) for j, block in enumerate(message.content)]
        if turns and turns[-1][0] == message.role and message.role != "system":
            turns[-1][2].extend(blocks)
        else:
            turns.append((message.role, i, blocks))
    return turns


def _chat_messages(req: _ConversationFields) -> tuple[ChatMessage, ...]:
    out: list[ChatMessage] = []
    if req.system is not None:
        system = req.system if isinstance(req.system, str) else _joined(req.system)
        if system:
            out.append(ChatMessage("system", system))
    names: dict[str, str] = {}  # tool_use id -> the tool's name
    turns = _turns(req.messages)
    for t, (role, first, blocks) in enumerate(turns):
        texts: list[str] = []
        calls: list[ToolCall] = []
        results: list[ChatMessage] = []
        for i, j, block in blocks:
            param = _block_param(i, j)
            if isinstance(block, TextBlockIn):
                texts.append(block.text)
            elif isinstance(block, (ThinkingBlockIn, RedactedThinkingBlockIn)):
                continue
            elif isinstance(block, ToolUseBlockIn):
                if role != "assistant":
                    raise bad_request(f"tool_use blocks belong in assistant messages, not {role} ones", param=param)
                calls.append(ToolCall(block.id, block.name, msgspec.json.encode(block.input).decode()))
                names[block.id] = block.name
            elif isinstance(block, ToolResultBlockIn):
                if role != "user":
                    raise bad_request(f"tool_result blocks belong in user messages, not {role} ones", param=param)
                results.append(ChatMessage("tool", _tool_result_text(block, param), tool_call_id=block.tool_use_id, name=names.get(block.tool_use_id)))
            else:
                _refuse_block(block, param)
        text = "\n".join(texts) if texts else None
        if role == "assistant":
            if text is None and not calls:
                if t == len(turns) - 1:
                    continue  # an empty final assistant turn: no prefill
                raise bad_request(f"messages[{first}] has no content: an assistant message needs text or tool_use blocks", param=f"messages[{first}].content")
            out.append(ChatMessage("assistant", text, tool_calls=tuple(calls)))
        else:
            out.extend(results)
            if text is not None:
                out.append(ChatMessage(role, text))
            elif not results:
                raise bad_request(f"messages[{first}] has no content: give text or tool_result blocks", param=f"messages[{first}].content")
    return tuple(out)


def _tool_settings(req: _ConversationFields) -> tuple[tuple[ToolSpec, ...], str, bool]:
    """The tools, the tool choice (none | auto | required | a name) and whether calls may be parallel."""
    if req.mcp_servers:
        raise unsupported("mcp_servers (remote MCP servers run by the API)", "mcp_servers")
    tools = req.tools or []
    for i, tool in enumerate(tools):
        if tool.type not in (None, "custom"):
            raise unsupported(f"server tool {tool.type!r} (this server runs no tools: give client tools with an input_schema)", f"tools[{i}].type")
        if tool.input_schema is None:
            raise bad_request(f"tools[{i}].input_schema: Field required", param=f"tools[{i}].input_schema")
        try:
            check_json_schema(tool.input_schema, f"tools[{i}].input_schema")
        except InvalidRequestError as exc:
            raise bad_request(exc.message, param=exc.param) from None
    names = [t.name for t in tools]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise bad_request(f"tools has two tools named {duplicate!r}: tool names must be unique", param="tools")
    choice = req.tool_choice
    parallel = not (choice is not None and not isinstance(choice, ToolChoiceNone) and choice.disable_parallel_tool_use)
    if isinstance(choice, (ToolChoiceAny, ToolChoiceTool)) and not tools:
        raise bad_request(f'tool_choice of type "{"any" if isinstance(choice, ToolChoiceAny) else "tool"}" needs tools', param="tool_choice")
    if not tools or isinstance(choice, ToolChoiceNone):
        name = "none"
    elif isinstance(choice, ToolChoiceAny):
        name = "required"
    elif isinstance(choice, ToolChoiceTool):
        if choice.name not in names:
            raise bad_request(f"tool_choice names tool {choice.name!r}, which is not among tools ({', '.join(names)})", param="tool_choice.name")
        name = choice.name
    else:
        name = "auto"
    specs = tuple(ToolSpec(t.name, t.description or "", t.input_schema or {}, bool(t.strict)) for t in tools)
    return (specs if name != "none" else ()), name, parallel


def _constraint(req: _ConversationFields) -> OutputConstraint | None:
    fmt = req.output_config.format if req.output_config is not None else None
    if fmt is None:
        return None
    return OutputConstraint("json_schema", msgspec.json.encode(fmt.schema).decode(), "output_config.format")


def count_tokens_messages(req: _ConversationFields) -> Conversation:
    """What `/v1/messages/count_tokens` renders and tokenizes (also the conversation of a
    `/v1/messages` request). Raises ApiError (400) naming the field for what the schema cannot say."""
    tools, choice, parallel = _tool_settings(req)
    return Conversation(_chat_messages(req), tools, choice, parallel, _constraint(req))


def messages_plan(req: MessagesRequest, meta: RequestMeta, model: str) -> GenerationPlan:
    """A `/v1/messages` request as one chat generation; `model` is the resolved model name."""
    conversation = count_tokens_messages(req)
    sampling = SamplingParams(
        max_tokens=req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        stop=tuple(s for s in req.stop_sequences or () if s),
    )
    return GenerationPlan(
        kind="chat", model=model, requests=[conversation.request(meta.request_id, sampling)], metas=[meta], prompt_of=[0],
        stream=bool(req.stream), include_usage=True, param_hint="messages",
    )


# -- replies ----------------------------------------------------------------------------------------


class TextBlock(Struct, tag_field="type", tag="text"):
    text: str


class ToolUseBlock(Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str = ""  # we have none to give; clients pass it back as is


ContentBlock = TextBlock | ToolUseBlock | ThinkingBlock
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Usage(Struct):
    input_tokens: int
    output_tokens: int


class Message(Struct, tag_field="type", tag="message", kw_only=True):
    """Anthropic's Message: the reply of a request that did not stream (and message_start's)."""

    id: str
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


def message_id(request_id: str) -> str:
    """A Message id (msg_...) from the daemon's request id (req-...)."""
    return "msg_" + request_id.removeprefix("req-")[:40]


def stop_reason(finish_reason: str | None, called_tools: bool) -> StopReason:
    """An engine's finish reason as Anthropic's stop_reason (see the module docstring)."""
    if finish_reason == "length":
        return "max_tokens"
    if finish_reason == "tool_calls" or called_tools:
        return "tool_use"
    return "end_turn"


def _tool_input(arguments: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": arguments}


class _Counter:
    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0

    def count(self, chunk: GenerationChunk) -> None:
        if chunk.prompt_tokens:
            self.input_tokens = chunk.prompt_tokens
        if chunk.completion_tokens:
            self.output_tokens = chunk.completion_tokens
        elif chunk.token_ids:
            self.output_tokens += len(chunk.token_ids)

    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens)


class MessageReply:
    """The Message of one generation (a request that did not stream), assembled from its chunks.
    `index` is the choice (always 0: a Messages request has one)."""

    def __init__(self, id: str, model: str):  # noqa: A002
        self.id = id
        self.model = model
        self.counter = _Counter()
        self.text = ""
        self.reasoning = ""
        self.calls: list[list[str]] = []  # [id, name, arguments] per call index
        self.finish_reason: str | None = None
        self.finished = False

    def feed(self, index: int, chunk: GenerationChunk) -> None:
        if self.finished:
            return
        self.counter.count(chunk)
        self.text += chunk.text
        self.reasoning += chunk.reasoning
        for d in chunk.tool_calls:
            while len(self.calls) <= d.index:
                self.calls.append(["", "", ""])
            call = self.calls[d.index]
            if d.id is not None:
                call[0] = d.id
            if d.name is not None:
                call[1] = d.name
            call[2] += d.arguments
        if chunk.finish_reason is not None:
            self.finished = True
            self.finish_reason = chunk.finish_reason

    def reply(self) -> Message:
        content: list[ContentBlock] = []
        if self.reasoning:
            content.append(ThinkingBlock(self.reasoning))
        if self.text:
            content.append(TextBlock(self.text))
        for i, (ident, name, arguments) in enumerate(self.calls):
            content.append(ToolUseBlock(ident or f"toolu_{self.id.removeprefix('msg_')}_{i}", name, _tool_input(arguments)))
        return Message(
            id=self.id, model=self.model, content=content, stop_reason=stop_reason(self.finish_reason, bool(self.calls)), usage=self.counter.usage(),
        )


# -- streams ----------------------------------------------------------------------------------------


class TextDelta(Struct, tag_field="type", tag="text_delta"):
    text: str


class InputJsonDelta(Struct, tag_field="type", tag="input_json_delta"):
    partial_json: str


class ThinkingDelta(Struct, tag_field="type", tag="thinking_delta"):
    thinking: str


class MessageStartEvent(Struct, tag_field="type", tag="message_start"):
    message: Message


class PingEvent(Struct, tag_field="type", tag="ping"):
    pass


class ContentBlockStartEvent(Struct, tag_field="type", tag="content_block_start"):
    index: int
    content_block: ContentBlock


class ContentBlockDeltaEvent(Struct, tag_field="type", tag="content_block_delta"):
    index: int
    delta: TextDelta | InputJsonDelta | ThinkingDelta


class ContentBlockStopEvent(Struct, tag_field="type", tag="content_block_stop"):
    index: int


class MessageDelta(Struct):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class DeltaUsage(Struct):
    output_tokens: int
    input_tokens: int | None = None  # the final count (message_start may have had 0)


class MessageDeltaEvent(Struct, tag_field="type", tag="message_delta"):
    delta: MessageDelta
    usage: DeltaUsage


class MessageStopEvent(Struct, tag_field="type", tag="message_stop"):
    pass


class ErrorObject(Struct):
    type: str
    message: str


class ErrorEvent(Struct, tag_field="type", tag="error"):
    error: ErrorObject


_encoder = msgspec.json.Encoder()


def sse_event(name: str, obj: object) -> bytes:
    """One event as Anthropic sends it: `event: NAME`, then one `data:` line of JSON."""
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(obj) + b"\n\n"


class MessageStream:
    """The server-sent events of one streamed Message, from its chunks.

    message_start is sent with the first chunk (which knows the prompt's token count), then a
    ping; `start()` sends nothing. Content comes as blocks indexed from 0: a block opens
    (content_block_start) when the kind of output changes (thinking, text, or the next tool
    call), takes deltas, and is closed (content_block_stop) before the next one opens. `end()`
    closes the last block and sends message_delta (stop_reason, final usage) and message_stop.
    `error()` sends an error event; the stream ends there."""

    def __init__(self, id: str, model: str):  # noqa: A002
        self.id = id
        self.model = model
        self.counter = _Counter()
        self.started = False
        self.closed = False
        self.finished = False
        self.finish_reason: str | None = None
        self.blocks = 0  # blocks opened so far
        self.open: tuple[str, int] | None = None  # (kind, tool call index or -1) of the open block
        self.call_blocks: dict[int, int] = {}  # tool call index -> its block's index

    def start(self) -> bytes:
        return b""

    def _start(self) -> bytes:
        self.started = True
        message = Message(id=self.id, model=self.model, content=[], stop_reason=None, usage=self.counter.usage())
        return sse_event("message_start", MessageStartEvent(message)) + sse_event("ping", PingEvent())

    def _close_block(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return sse_event("content_block_stop", ContentBlockStopEvent(self.blocks - 1))

    def _open_block(self, kind: str, key: int, block: ContentBlock) -> bytes:
        out = self._close_block()
        self.open = (kind, key)
        self.blocks += 1
        return out + sse_event("content_block_start", ContentBlockStartEvent(self.blocks - 1, block))

    def _delta(self, index: int, delta: TextDelta | InputJsonDelta | ThinkingDelta) -> bytes:
        return sse_event("content_block_delta", ContentBlockDeltaEvent(index, delta))

    def _tool_call(self, d: ToolCallDelta) -> bytes:
        out = b""
        if d.index not in self.call_blocks:
            ident = d.id or f"toolu_{self.id.removeprefix('msg_')}_{d.index}"
            out += self._open_block("tool_use", d.index, ToolUseBlock(ident, d.name or "", {}))
            self.call_blocks[d.index] = self.blocks - 1
        if d.arguments:
            # A fragment of a call whose block was closed (calls interleaved) still names that block.
            out += self._delta(self.call_blocks[d.index], InputJsonDelta(d.arguments))
        return out

    def feed(self, index: int, chunk: GenerationChunk) -> bytes:
        """The events of one chunk: message_start first, then block starts, deltas and stops."""
        if self.closed or self.finished:
            return b""
        self.counter.count(chunk)
        out = b"" if self.started else self._start()
        if chunk.reasoning:
            if self.open != ("thinking", -1):
                out += self._open_block("thinking", -1, ThinkingBlock(""))
            out += self._delta(self.blocks - 1, ThinkingDelta(chunk.reasoning))
        if chunk.text:
            if self.open != ("text", -1):
                out += self._open_block("text", -1, TextBlock(""))
            out += self._delta(self.blocks - 1, TextDelta(chunk.text))
        for d in chunk.tool_calls:
            out += self._tool_call(d)
        if chunk.finish_reason is not None:
            self.finished = True
            self.finish_reason = chunk.finish_reason
        return out

    def end(self) -> bytes:
        """After the last chunk: the last block's stop, message_delta, message_stop."""
        if self.closed:
            return b""
        self.closed = True
        out = b"" if self.started else self._start()
        out += self._close_block()
        usage = self.counter.usage()
        delta = MessageDelta(stop_reason(self.finish_reason, bool(self.call_blocks)))
        out += sse_event("message_delta", MessageDeltaEvent(delta, DeltaUsage(usage.output_tokens, usage.input_tokens)))
        return out + sse_event("message_stop", MessageStopEvent())

    def error(self, status: int, message: str) -> bytes:
        """An error after the stream began: an `error` event with Anthropic's error object; the stream ends."""
        if self.closed:
            return b""
        self.closed = True
        return sse_event("error", ErrorEvent(ErrorObject(error_type(status), message)))


# -- errors -------------------------------------------------------------------------------------------

# Anthropic's error types per HTTP status (docs.claude.com/en/api/errors); other 4xx are
# invalid_request_error, other 5xx api_error. 503 (the daemon draining, an engine down) reads
# as overloaded_error: try again later. 408 (X-SAGE-Deadline-Ms ran out) is a timeout_error.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error reply: {"type": "error", "error": {"type", "message"}}."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}
