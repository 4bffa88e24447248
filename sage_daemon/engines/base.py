"""The engine protocol: what every backend (llama.cpp, sentence-transformers, vLLM, remote) offers the pool.

Engines know nothing of queues, priorities or HTTP: the control plane decides what runs when,
the pool decides where. Blocking engines run their work on threads they own and hand results
to trio through memory channels; no method here blocks the trio thread.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

# The client-facing errors engines raise live in core (the doors translate them); re-exported here.
from sage_client.protocol import ModelKind
from sage_daemon.core.errors import (
    ChatTemplateMissingError,
    ContextOverflowError,
    EngineError,
    InvalidRequestError,
    InvalidSamplingError,
)

__all__ = [
    "ChatMessage", "ChatTemplateMissingError", "ConstraintKind", "OutputConstraint", "ToolCall", "ToolCallDelta", "ToolSpec", "ContextOverflowError", "EmbeddingEngine", "EmbeddingResult", "Engine",
    "EngineError", "EngineHealth", "EngineState", "EngineStats", "FinishReason", "GenerationChunk", "GenerationRequest",
    "InvalidRequestError", "InvalidSamplingError", "LLMEngine", "ModelInfo", "NullGate", "SamplingParams", "StepGate",
    "TokenLogprob", "TopLogprob",
]

FinishReason = Literal["stop", "length", "tool_calls", "cancelled", "error"]


class EngineState(str, enum.Enum):
    STOPPED = "stopped"
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    ERROR = "error"


class ToolCall(msgspec.Struct, frozen=True):
    """A function call the model made (an assistant message's `tool_calls`, OpenAI's shape flattened)."""

    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


class ChatMessage(msgspec.Struct, frozen=True):
    role: str  # system | developer | user | assistant | tool
    content: str | None  # None: an assistant message that only calls tools
    tool_calls: tuple[ToolCall, ...] = ()  # assistant messages
    tool_call_id: str | None = None  # role "tool": the call this is the result of
    name: str | None = None  # role "tool": the function's name, where the client gave it


class ToolSpec(msgspec.Struct, frozen=True):
    """A function the model may call (OpenAI's `tools[i].function`)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = {}  # a JSON Schema for the arguments object
    strict: bool = False


ConstraintKind = Literal["json_schema", "json_object", "regex", "choice", "lark", "gbnf"]


class OutputConstraint(msgspec.Struct, frozen=True):
    """What a generation's text must match, enforced by constrained decoding (a token mask per step).

    `value` is the grammar in the kind's own text: a JSON Schema as JSON text (json_schema), "" or
    a schema for json_object, a regular expression (regex), a JSON list of strings (choice), a
    Lark grammar as llguidance reads it (lark), a GBNF grammar as llama-server reads it (gbnf).
    `param` is the request field an error names (response_format, grammar, guided_regex...).
    `trigger`: a lazy constraint. The output is free until it contains `trigger`; from there on
    (the trigger included) it must match the grammar. Used for tool calls with tool_choice "auto".
    """

    kind: ConstraintKind
    value: str = ""
    param: str = "response_format"
    name: str = "output"  # json_schema's name (passed on to remote servers)
    trigger: str | None = None


class SamplingParams(msgspec.Struct, frozen=True):
    """Per-request sampling. Defaults follow the OpenAI API (temperature 1, top_p 1)."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), OpenAI's logit_bias
    logprobs: int | None = None  # None: none; k >= 0: each sampled token's log-probability and the k likeliest tokens'


class GenerationRequest(msgspec.Struct, frozen=True):
    """One sequence to generate. Exactly one of prompt / messages / prompt_tokens is set."""

    request_id: str
    sampling: SamplingParams = SamplingParams()
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    prompt_tokens: tuple[int, ...] | None = None
    background: bool = False  # batch work (job stages, background priority): its steps may be cut short for interactive work
    constraint: OutputConstraint | None = None  # structured output: response_format, a grammar, or a forced tool call
    tools: tuple[ToolSpec, ...] = ()  # functions offered to the model (rendered into the prompt by the chat template)
    tool_choice: str = "auto"  # none | auto | required | the name of the one function it must call
    parallel_tool_calls: bool = True  # more than one call in a reply


class ToolCallDelta(msgspec.Struct, frozen=True):
    """A piece of a tool call in a stream, as OpenAI's `delta.tool_calls[i]`: the first piece of
    call `index` carries `id` and `name`, the others only fragments of `arguments` (JSON text)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class TopLogprob(msgspec.Struct, frozen=True):
    """One candidate token and its log-probability under the model (before sampling settings)."""

    token: str  # its text; a piece of a character spread over several tokens reads as U+FFFD
    bytes: tuple[int, ...]  # its exact UTF-8 bytes
    logprob: float


class TokenLogprob(msgspec.Struct, frozen=True):
    """A sampled token's log-probability, and the likeliest tokens at that position when asked for."""

    token: str
    bytes: tuple[int, ...]
    logprob: float
    top: tuple[TopLogprob, ...] = ()


class GenerationChunk(msgspec.Struct):
    """A piece of a generation stream. `text` never splits a UTF-8 character.

    The last chunk of a stream has finish_reason set, and carries the final token counts.
    """

    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens reused from the KV cache (prefix reuse)
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # one per entry of token_ids, when the request asked for them
    reasoning: str = ""  # text inside the model's reasoning markers (<think>...</think>): not part of `text`
    tool_calls: tuple[ToolCallDelta, ...] = ()  # tool calls parsed out of the output (their text is not in `text`)


class EmbeddingResult(msgspec.Struct):
    vectors: list[list[float]]  # one per input, normalised when the engine says so
    prompt_tokens: int  # total tokens across inputs, for usage
    truncated: int = 0  # how many inputs were cut at the model's max length
    dimensions: int = 0
    token_counts: list[int] = []  # tokens of each input before truncation at max_seq_length (empty if unknown)


class RerankResult(msgspec.Struct):
    """Relevance of each document to one query (POST /v1/rerank, a job's rerank step)."""

    scores: list[float]  # one per document, in the documents' order; higher is more relevant
    prompt_tokens: int  # tokens the model read (query + document per pair), for usage
    truncated: int = 0  # pairs cut at the model's max length


class EngineHealth(msgspec.Struct):
    state: EngineState
    ok: bool
    detail: str = ""


class EngineStats(msgspec.Struct):
    slots_total: int = 0
    slots_busy: int = 0
    requests_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    cached_prompt_tokens_total: int = 0
    extra: dict[str, float] = {}


class StepGate(Protocol):
    """Shares the CPU between engines at step granularity (the control plane owns it).

    A decode loop holds the gate for one step (one llama_decode, one embedding batch) and
    releases it between steps, so work on another engine can run in between.
    """

    def acquire(self, background: bool = False) -> None:
        """Wait for this engine's turn; `background` work may be held back for interactive work."""

    def release(self) -> None: ...

    def yield_to_interactive(self) -> None:
        """Called by the holder between two parts of a background step (an embedding batch's
        layers' blocks): if interactive work waits for its first token, let it take the cores first."""


class NullGate:
    """A gate that never waits: for an engine that has the cores to itself."""

    def acquire(self, background: bool = False) -> None:
        return None

    def release(self) -> None:
        return None

    def yield_to_interactive(self) -> None:
        return None


@runtime_checkable
class Engine(Protocol):
    """What the pool calls on every engine. Nothing here blocks the trio thread."""

    name: str
    backend: str
    local_tokenizer: bool  # a TokenCodec: its tokenizer runs in this process (POST /tokenize)

    @property
    def kind(self) -> ModelKind:
        """Read-only here, so an engine may declare its own narrower Literal."""

    async def load(self) -> None:
        """Load weights; returns when the engine can serve. Raises EngineError on failure."""

    async def unload(self) -> None:
        """Stop serving, fail or finish in-flight work, free memory. Idempotent."""

    def health(self) -> EngineHealth: ...

    def stats(self) -> EngineStats: ...


class TokenCodec(Protocol):
    """An engine whose tokenizer is in this process (`local_tokenizer`): llama.cpp and
    sentence-transformers. Remote and vLLM engines tokenize in their server. All blocking."""

    vocab_size: int  # ids are in [0, vocab_size)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of `text`; `add_special`: with the model's special prefix/suffix tokens."""

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of ids in [0, vocab_size) (callers check the range)."""

    def token_pieces(self, token_ids: Sequence[int]) -> list[bytes]:
        """Each token's own bytes (a piece of a UTF-8 character for some)."""


@runtime_checkable
class LLMEngine(Engine, Protocol):
    """What the control plane calls on a language model: `prepare` once, then `generate`.

    `tokenize` and `prepare` are blocking (a tokenizer, a chat template): callers on the trio
    thread run them with `trio.to_thread.run_sync`.
    """

    n_ctx: int  # context per sequence
    parallel: int  # sequences decoded together: the plane admits at most this many

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """Validate and normalise a request before it queues: render the chat template and
        tokenize where the engine can (prompt_tokens set), check it fits the context and that
        its sampling values fit the model. Raises InvalidRequestError (ContextOverflowError,
        ChatTemplateMissingError, InvalidSamplingError) for the client's mistakes and
        EngineError when the engine cannot serve. Blocking."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream a generation of a request that went through `prepare`. Cancelling the
        consuming task (or closing the iterator) frees the slot at once."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` (with the model's special prefix tokens). Blocking."""

    def has_chat_template(self) -> bool: ...


@runtime_checkable
class EmbeddingEngine(Engine, Protocol):
    """What the control plane calls on an embedding model. Inputs come as batches the plane formed."""

    dimensions: int  # native vector size
    max_seq_length: int  # tokens per input; longer inputs are cut (and counted as truncated); 0 = unknown
    supports_dimensions: bool  # vectors can be cut to a smaller `dimensions` (Matryoshka models)
    accepts_token_ids: bool  # embed_tokens works

    async def embed(self, texts: list[str], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        """One vector per text. `background`: the batch may yield the cores to interactive work.
        An input the model cannot take raises InvalidRequestError; a dead engine EngineError."""

    async def embed_tokens(self, token_lists: list[list[int]], dimensions: int | None = None, background: bool = False) -> EmbeddingResult:
        """As `embed`, for inputs given as token ids (only when `accepts_token_ids`)."""


@runtime_checkable
class RerankEngine(Engine, Protocol):
    """What the control plane calls on a reranker (a cross-encoder reads query and document
    together). Requests come as batches the plane formed: one (query, documents) group each."""

    max_seq_length: int  # tokens per (query, document) pair; longer pairs are cut; 0 = unknown

    async def rerank(self, groups: list[tuple[str, list[str]]], background: bool = False) -> list[RerankResult]:
        """One result per group, its scores in the group's document order. A document the model
        cannot take raises InvalidRequestError; a dead engine EngineError."""


class ModelInfo(msgspec.Struct):
    """A configured model, loaded or not (GET /v1/models, sagectl models / ps)."""

    id: str
    kind: ModelKind
    backend: str  # the backend chosen (llamacpp, vllm, sentence-transformers, remote)
    state: str  # stopped | loading | ready | draining | error
    owned_by: str = "sage"
    created: int = 0
    reason: str = ""  # why this backend (e.g. "no GPU: llama.cpp on CPU"), or the error
    device: str = "cpu"
    slots_busy: int = 0
    slots_total: int = 0
    keep_alive_until: float | None = None  # wall-clock time; None = not loaded or forever
    n_ctx: int = 0
    dimensions: int = 0
    chat_template: bool = False
    failures: int = 0  # failed loads or engine deaths in a row
    restart_in_s: float | None = None  # a failed model the pool restarts by itself: seconds until it tries
