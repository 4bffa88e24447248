"""Every request and response body of the OpenAI-compatible door, as msgspec Structs.

Requests are decoded straight into these Structs, so the constraints here (`Meta`) are the
validation at the door; `GET /openapi.json` is generated from the same Structs. Unknown
fields are ignored, as OpenAI's SDKs and vLLM expect; fields we know and do not support are
declared so that the route can refuse them by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

# -- shared pieces ------------------------------------------------------------------------

ModelName = Annotated[str, Meta(min_length=1, max_length=256, description="A configured model name (GET /v1/models).")]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
LogitBias = Annotated[float, Meta(ge=-100.0, le=100.0)]
TokenIdKey = Annotated[str, Meta(pattern="^[0-9]+$", max_length=12)]  # a token id as a JSON object key
TopLogprobs = Annotated[int, Meta(ge=0, le=20)]  # OpenAI's range for chat (its legacy completions stop at 5), vLLM's max_logprobs
MaxTokens = Annotated[int, Meta(ge=1, le=1_048_576)]
ChoicesN = Annotated[int, Meta(ge=1, le=16, description="Choices to generate; each runs as its own sequence.")]
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
TokenId = Annotated[int, Meta(ge=0, le=2**31 - 1)]
StopList = Annotated[list[str], Meta(max_length=4)]
PriorityName = Literal["critical", "high", "normal", "low", "background"]


class StreamOptions(Struct, omit_defaults=True):
    include_usage: bool = False


class ResponseFormat(Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorDetail(Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(Struct):
    """Every error, as OpenAI answers it."""

    error: ErrorDetail


# -- chat completions ---------------------------------------------------------------------


class TextPart(Struct):
    type: Annotated[str, Meta(description='Only "text" is supported.')]
    text: str = ""


class ChatMessageIn(Struct):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class _SamplingFields(Struct, kw_only=True):
    """The fields chat and text completions share (sampling, streaming, bookkeeping)."""

    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    stop: str | StopList | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: ChoicesN | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    logit_bias: dict[TokenIdKey, LogitBias] | None = None  # token id -> bias added to its logit
    # vLLM's sampling extensions.
    top_k: Annotated[int, Meta(ge=0)] | None = None
    min_p: TopP | None = None
    ignore_eos: bool | None = None


class ChatCompletionRequest(_SamplingFields, kw_only=True):
    model: ModelName
    messages: Annotated[list[ChatMessageIn], Meta(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None  # needs logprobs: true
    # Known but not supported: refused by name when set.
    tools: list[Any] | None = None
    tool_choice: Any | None = None
    functions: list[Any] | None = None


class ChatMessageOut(Struct):
    role: str
    content: str


class LogprobTop(Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class LogprobContent(Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[LogprobTop]


class ChatLogprobs(Struct):
    content: list[LogprobContent] | None
    refusal: None = None


class ChatChoice(Struct):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None


class ChatDelta(Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(Struct):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = None
    system_fingerprint: str | None = None


# -- completions --------------------------------------------------------------------------

PromptItem = Annotated[str, Meta(max_length=4_000_000)] | TokenId | list[TokenId]


class CompletionRequest(_SamplingFields, kw_only=True):
    model: ModelName
    prompt: Annotated[str, Meta(max_length=4_000_000)] | Annotated[list[PromptItem], Meta(min_length=1, max_length=64)]
    logprobs: TopLogprobs | None = None  # the sampled token's and this many likeliest tokens' log-probabilities
    # Known but not supported.
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


class CompletionLogprobs(Struct):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(Struct):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(Struct):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: str | None = None


# -- embeddings ---------------------------------------------------------------------------

EmbeddingItem = str | TokenId | Annotated[list[TokenId], Meta(min_length=1)]


class EmbeddingRequest(Struct, kw_only=True):
    model: ModelName
    input: str | Annotated[list[EmbeddingItem], Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None


class Embedding(Struct):
    index: int
    embedding: list[float] | str
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: Literal["list"] = "list"


# -- models -------------------------------------------------------------------------------


class Model(Struct):
    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"
    # Extensions (as vLLM and Ollama add theirs): what the daemon knows of the model.
    kind: str = "llm"
    backend: str = ""
    state: str = ""
    max_model_len: int | None = None
    dimensions: int | None = None
    chat_template: bool | None = None


class ModelList(Struct):
    data: list[Model]
    object: Literal["list"] = "list"


# -- health -------------------------------------------------------------------------------


class HealthModel(Struct):
    id: str
    kind: str
    backend: str
    state: str
    reason: str = ""


class Health(Struct):
    status: Literal["ok", "unavailable"]
    reasons: list[str]
    version: str
    state: str
    models: list[HealthModel] = []


REQUEST_TYPES: dict[str, type] = {
    "chat": ChatCompletionRequest,
    "completion": CompletionRequest,
    "embedding": EmbeddingRequest,
}
