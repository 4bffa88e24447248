"""Every request and response body of the OpenAI-compatible door, as msgspec Structs.

Requests are decoded straight into these Structs, so the constraints here (`Meta`) are the
validation at the door; `GET /openapi.json` is generated from the same Structs. Unknown
fields are ignored, as OpenAI's SDKs and vLLM expect; fields we know and do not support are
declared so that the route can refuse them by name.

Every value that reaches an engine is bounded here (issue 22: one request must not be able to
take down a batch), with OpenAI's limits where it documents one: `n` <= 16 (its own is 128, but
each choice is a sequence of a local batch), `stop` at most 4 strings of at most 1,024
characters each, `logit_bias` at most 300 entries (OpenAI's limit), `metadata` at most 16 pairs
(keys <= 64, values <= 512 characters, as OpenAI's), `top_k` <= 1,048,576 (above every shipped
vocabulary; the engine also turns a top_k at or above its vocabulary into "off"), `seed` an
int64, `logprobs`/`top_logprobs` 0..20. The engines check again where a value crosses into C.

Integers: JSON Schema counts 6.0 as an integer, so the door does too (`decode` in http/app.py
turns whole floats into ints before validating), and /openapi.json accepts exactly what the
server does; 6.5 is refused.
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
StopString = Annotated[str, Meta(max_length=1024)]
StopList = Annotated[list[StopString], Meta(max_length=4)]
TopK = Annotated[int, Meta(ge=0, le=1_048_576, description="vLLM's extension: keep the k likeliest tokens (0: off).")]
Metadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]],
    Meta(max_length=16, description="Up to 16 pairs, as OpenAI's; `priority` is read as X-SAGE-Priority."),
]
LogitBiasMap = Annotated[dict[TokenIdKey, LogitBias], Meta(max_length=300, description="Token id -> bias added to its logit; at most 300 entries, as OpenAI's.")]
NonEmptyText = Annotated[str, Meta(min_length=1, max_length=4_000_000)]
PriorityName = Literal["critical", "high", "normal", "low", "background"]


class StreamOptions(Struct, omit_defaults=True):
    include_usage: bool = False


# OpenAI's rule for function and schema names.
FunctionName = Annotated[str, Meta(pattern="^[a-zA-Z0-9_-]{1,64}$", description="a-z, A-Z, 0-9, underscores and dashes; at most 64.")]
JsonSchemaObject = Annotated[dict[str, Any], Meta(description="A JSON Schema (the subset OpenAI's structured outputs document).")]
GrammarText = Annotated[str, Meta(min_length=1, max_length=1_000_000)]


class JsonSchemaFormat(Struct):
    name: FunctionName
    schema: JsonSchemaObject | None = None  # None: any JSON object
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(Struct):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(Struct):
    name: FunctionName
    description: str | None = None
    parameters: JsonSchemaObject | None = None  # None: a function without arguments
    strict: bool | None = None


class Tool(Struct):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionRef(Struct):
    name: FunctionName


class NamedToolChoice(Struct):
    type: Literal["function"]
    function: FunctionRef


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class StructuredOutputs(Struct, omit_defaults=True):
    """vLLM's `structured_outputs` extension: exactly one of these."""

    json: JsonSchemaObject | str | None = None
    regex: GrammarText | None = None
    choice: Annotated[list[str], Meta(min_length=1, max_length=4096)] | None = None
    grammar: GrammarText | None = None
    json_object: bool | None = None


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


class ToolCallFunction(Struct):
    name: FunctionName
    arguments: Annotated[str, Meta(max_length=4_000_000)]  # JSON text


class ToolCallIn(Struct):
    id: Annotated[str, Meta(min_length=1, max_length=256)]
    function: ToolCallFunction
    type: Literal["function"] = "function"


class ChatMessageIn(Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # None only for an assistant message with tool_calls
    name: str | None = None
    tool_calls: Annotated[list[ToolCallIn], Meta(max_length=128)] | None = None  # assistant
    tool_call_id: Annotated[str, Meta(min_length=1, max_length=256)] | None = None  # tool
    reasoning_content: str | None = None  # an earlier reply's reasoning (not sent back to the model)


class _SamplingFields(Struct, kw_only=True):
    """The fields chat and text completions share (sampling, streaming, bookkeeping)."""

    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    stop: StopString | StopList | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: ChoicesN | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: Metadata | None = None
    logit_bias: LogitBiasMap | None = None
    # vLLM's sampling extensions.
    top_k: TopK | None = None
    min_p: TopP | None = None
    ignore_eos: bool | None = None


class ChatCompletionRequest(_SamplingFields, kw_only=True):
    model: ModelName
    messages: Annotated[list[ChatMessageIn], Meta(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None  # needs logprobs: true
    tools: Annotated[list[Tool], Meta(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None  # default: "auto" with tools, "none" without
    parallel_tool_calls: bool | None = None
    # Structured-output extensions people send: llama-server's and vLLM's.
    grammar: GrammarText | None = None  # llama-server: a GBNF grammar
    json_schema: JsonSchemaObject | None = None  # llama-server: a JSON Schema for the reply
    structured_outputs: StructuredOutputs | None = None  # vLLM >= 0.10
    guided_json: JsonSchemaObject | str | None = None  # vLLM < 0.10
    guided_regex: GrammarText | None = None
    guided_choice: Annotated[list[str], Meta(min_length=1, max_length=4096)] | None = None
    guided_grammar: GrammarText | None = None
    # Known but not supported: refused by name when set.
    functions: list[Any] | None = None
    function_call: Any | None = None


class ToolCallOutFunction(Struct):
    name: str
    arguments: str


class ToolCallOut(Struct):
    id: str
    function: ToolCallOutFunction
    type: Literal["function"] = "function"


class ChatMessageOut(Struct, omit_defaults=True):
    role: str
    content: str | None  # None when the reply is only tool calls (always written)
    tool_calls: list[ToolCallOut] | None = None
    reasoning_content: str | None = None  # vLLM's and llama-server's field: the model's reasoning


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


class ToolCallDeltaFunction(Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDeltaOut(Struct, omit_defaults=True):
    """OpenAI's `delta.tool_calls[i]`: id, type and name in a call's first delta; then argument fragments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallDeltaFunction | None = None


class ChatDelta(Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDeltaOut] | None = None


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
    best_of: ChoicesN | None = None


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

# Empty strings are refused by the schema (an empty text has no embedding), as the server does.
EmbeddingItem = NonEmptyText | TokenId | Annotated[list[TokenId], Meta(min_length=1)]


class EmbeddingRequest(Struct, kw_only=True):
    model: ModelName
    input: NonEmptyText | Annotated[list[EmbeddingItem], Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1, le=65_536)] | None = None
    user: str | None = None
    metadata: Metadata | None = None


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


# -- /v1/rerank (Jina's and Cohere's shape, as llama-server, vLLM and Infinity serve it) ---------

MAX_RERANK_DOCUMENTS = 1000  # Cohere's recommended maximum; each document is a forward pass of the reranker
DocumentText = Annotated[str, Meta(max_length=4_000_000)]


class RerankDocument(Struct):
    text: DocumentText


class RerankRequest(Struct, kw_only=True):
    """Cohere's SDK sends every field, null when unset: nulls mean the default."""

    model: ModelName
    query: NonEmptyText
    documents: Annotated[list[DocumentText | RerankDocument], Meta(min_length=1, max_length=MAX_RERANK_DOCUMENTS)]
    top_n: Annotated[int, Meta(ge=1)] | None = None
    return_documents: bool | None = None  # default true (Jina, vLLM)
    # Cohere's: accepted and not used (a document is read up to the model's length)
    max_chunks_per_doc: int | None = None
    max_tokens_per_doc: int | None = None
    rank_fields: list[str] | None = None


class RerankResultItem(Struct, omit_defaults=True):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(Struct):
    prompt_tokens: int
    total_tokens: int


class RerankReply(Struct):
    id: str
    model: str
    results: list[RerankResultItem]
    usage: RerankUsage
    object: Literal["rerank"] = "rerank"


# -- /tokenize and /detokenize (llama-server's and vLLM's shapes) --------------------------------


class TokenizeRequest(Struct, kw_only=True):
    """llama-server sends `content` (and `add_special`, `with_pieces`), vLLM `prompt` (and `add_special_tokens`)."""

    model: ModelName
    content: Annotated[str, Meta(max_length=4_000_000)] | None = None
    prompt: Annotated[str, Meta(max_length=4_000_000)] | None = None
    add_special: bool | None = None
    add_special_tokens: bool | None = None
    with_pieces: bool = False


class TokenPiece(Struct):
    id: int
    piece: str | list[int]  # the token's text, or its bytes when they are not whole UTF-8 (as llama-server)


class TokenizeReply(Struct):
    tokens: list[int] | list[TokenPiece]
    count: int
    max_model_len: int


class DetokenizeRequest(Struct, kw_only=True):
    model: ModelName
    tokens: Annotated[list[Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]], Meta(max_length=1_000_000)]


class DetokenizeReply(Struct):
    content: str  # llama-server's name
    prompt: str  # vLLM's
