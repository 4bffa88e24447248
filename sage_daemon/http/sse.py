"""OpenAI's replies from generation chunks, with no I/O (hypercorn's protocol/IO split):
`ChatStream`/`CompletionStream` turn chunks into the bytes of `data: {...}\\n\\n` events, and
`ChatReply`/`CompletionReply` assemble the one JSON reply of a request that did not ask to
stream. The caller (http/generation.py) owns the I/O: it feeds chunks in and writes out what
comes back.

A chat stream is: one chunk per choice with the role in its delta, content deltas, a chunk with
`finish_reason` per choice, the usage chunk (`choices: []`) when `stream_options.include_usage`
asked for it, then `data: [DONE]`. An error after the stream started is one event carrying the
OpenAI error object, then `data: [DONE]`.
"""

from __future__ import annotations

import msgspec

from sage_daemon.engines.base import GenerationChunk, TokenLogprob, ToolCallDelta
from sage_daemon.http.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    ErrorResponse,
    LogprobContent,
    LogprobTop,
    ToolCallDeltaFunction,
    ToolCallDeltaOut,
    ToolCallOut,
    ToolCallOutFunction,
    Usage,
)

DONE = b"data: [DONE]\n\n"
_encoder = msgspec.json.Encoder()


def event(obj: object) -> bytes:
    """One SSE event whose data is `obj` as JSON (JSON never contains a raw newline)."""
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def public_finish_reason(reason: str | None) -> str | None:
    """Engines' reasons as OpenAI's: stop, length and tool_calls pass; anything else ended as a stop."""
    if reason is None or reason in ("stop", "length", "tool_calls"):
        return reason
    return "stop"


def tool_call_deltas(deltas: tuple[ToolCallDelta, ...]) -> list[ToolCallDeltaOut]:
    """OpenAI's `delta.tool_calls` for a chunk's pieces of tool calls."""
    out = []
    for d in deltas:
        first = d.id is not None
        out.append(ToolCallDeltaOut(d.index, d.id, "function" if first else None, ToolCallDeltaFunction(d.name, d.arguments if d.arguments or first else None)))
    return out


class ToolCallAssembler:
    """Whole tool calls (id, name, arguments) of one choice, from its chunks' pieces."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []  # [id, name, arguments] per index

    def feed(self, deltas: tuple[ToolCallDelta, ...]) -> None:
        for d in deltas:
            while len(self.calls) <= d.index:
                self.calls.append(["", "", ""])
            call = self.calls[d.index]
            if d.id is not None:
                call[0] = d.id
            if d.name is not None:
                call[1] = d.name
            call[2] += d.arguments

    def out(self) -> list[ToolCallOut] | None:
        return [ToolCallOut(i, ToolCallOutFunction(n, a)) for i, n, a in self.calls] or None


def chat_logprobs(entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> ChatLogprobs:
    """A chat choice's `logprobs` object for these tokens."""
    return ChatLogprobs([
        LogprobContent(e.token, e.logprob, list(e.bytes), [LogprobTop(t.token, t.logprob, list(t.bytes)) for t in e.top])
        for e in entries
    ])


def completion_logprobs(entries: tuple[TokenLogprob, ...] | list[TokenLogprob], text_offset: int = 0) -> CompletionLogprobs:
    """A completion choice's `logprobs` (the legacy shape): each top dict also holds the sampled
    token, as OpenAI's does; offsets count characters from `text_offset`."""
    offsets = []
    for e in entries:
        offsets.append(text_offset)
        text_offset += len(e.token)
    return CompletionLogprobs(
        [e.token for e in entries],
        [e.logprob for e in entries],
        [{**{t.token: t.logprob for t in e.top}, e.token: e.logprob} for e in entries],
        offsets,
    )


class _Stream:
    """Counts tokens per choice and knows which choices have finished."""

    def __init__(
        self, *, id: str, model: str, created: int, n: int = 1, include_usage: bool = False, prompt_of: list[int] | None = None, logprobs: bool = False  # noqa: A002
    ):
        """`prompt_of[i]` is the prompt that choice i continues (default: all share one prompt),
        so usage counts each prompt once, as OpenAI does for n > 1. `logprobs`: the request asked
        for them (each content event carries its tokens')."""
        self.prompt_of = prompt_of if prompt_of is not None else [0] * n
        self.logprobs = logprobs
        self.id = id
        self.model = model
        self.created = created
        self.n = n
        self.include_usage = include_usage
        self.prompt_tokens = [0] * n
        self.completion_tokens = [0] * n
        self.finished = [False] * n
        self.closed = False

    @property
    def all_finished(self) -> bool:
        return all(self.finished)

    def usage(self) -> Usage:
        per_prompt: dict[int, int] = {}
        for index, tokens in enumerate(self.prompt_tokens):
            key = self.prompt_of[index]
            per_prompt[key] = max(per_prompt.get(key, 0), tokens)
        prompt = sum(per_prompt.values())
        completion = sum(self.completion_tokens)
        return Usage(prompt, completion, prompt + completion)

    def _count(self, index: int, chunk: GenerationChunk) -> None:
        if chunk.prompt_tokens:
            self.prompt_tokens[index] = chunk.prompt_tokens
        if chunk.completion_tokens:
            self.completion_tokens[index] = chunk.completion_tokens
        elif chunk.token_ids:
            self.completion_tokens[index] += len(chunk.token_ids)

    def error(self, error: ErrorResponse) -> bytes:
        """The error event, then [DONE]: the stream ends here."""
        if self.closed:
            return b""
        self.closed = True
        return event(error) + DONE


class ChatStream(_Stream):
    """`chat.completion.chunk` events for `n` choices of one request."""

    def __init__(self, **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.started = [False] * self.n

    def _chunk(self, choices: list[ChatChunkChoice]) -> bytes:
        return event(ChatCompletionChunk(self.id, self.created, self.model, choices))

    def start(self) -> bytes:
        """The first event of every choice: the assistant role with empty content."""
        out = b""
        for index in range(self.n):
            if not self.started[index]:
                self.started[index] = True
                out += self._chunk([ChatChunkChoice(index, ChatDelta(role="assistant", content=""))])
        return out

    def feed(self, index: int, chunk: GenerationChunk) -> bytes:
        """The events for one chunk of choice `index` (content delta, then the finish chunk)."""
        if self.closed or self.finished[index]:
            return b""
        out = b"" if self.started[index] else self.start()
        self._count(index, chunk)
        if chunk.reasoning:
            out += self._chunk([ChatChunkChoice(index, ChatDelta(reasoning_content=chunk.reasoning))])
        if chunk.text:
            logprobs = chat_logprobs(chunk.logprobs) if self.logprobs else None
            out += self._chunk([ChatChunkChoice(index, ChatDelta(content=chunk.text), logprobs=logprobs)])
        if chunk.tool_calls:
            out += self._chunk([ChatChunkChoice(index, ChatDelta(tool_calls=tool_call_deltas(chunk.tool_calls)))])
        if chunk.finish_reason is not None:
            self.finished[index] = True
            out += self._chunk([ChatChunkChoice(index, ChatDelta(), public_finish_reason(chunk.finish_reason))])
        return out

    def end(self) -> bytes:
        """After every choice finished: the usage chunk when asked for, then [DONE]."""
        if self.closed:
            return b""
        self.closed = True
        out = b""
        if self.include_usage:
            out += event(ChatCompletionChunk(self.id, self.created, self.model, [], usage=self.usage()))
        return out + DONE


class CompletionStream(_Stream):
    """`text_completion` events (the legacy completions stream) for `n` choices."""

    def __init__(self, **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.text_offsets = [0] * self.n  # characters of each choice's text so far (logprobs' text_offset)

    def _chunk(self, index: int, chunk: GenerationChunk, finish_reason: str | None) -> bytes:
        logprobs = None
        if self.logprobs:
            logprobs = completion_logprobs(chunk.logprobs, self.text_offsets[index])
            self.text_offsets[index] += sum(len(e.token) for e in chunk.logprobs)
        return event(Completion(self.id, self.created, self.model, [CompletionChoice(index, chunk.text, finish_reason, logprobs)]))

    def start(self) -> bytes:
        return b""

    def feed(self, index: int, chunk: GenerationChunk) -> bytes:
        if self.closed or self.finished[index]:
            return b""
        self._count(index, chunk)
        out = b""
        if chunk.finish_reason is not None:
            self.finished[index] = True
            out += self._chunk(index, chunk, public_finish_reason(chunk.finish_reason))
        elif chunk.text:
            out += self._chunk(index, chunk, None)
        return out

    def end(self) -> bytes:
        if self.closed:
            return b""
        self.closed = True
        out = b""
        if self.include_usage:
            out += event(Completion(self.id, self.created, self.model, [], usage=self.usage()))
        return out + DONE


class _Reply(_Stream):
    """The text, log-probabilities and finish reason of each choice, gathered for one reply."""

    def __init__(self, **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.texts = [""] * self.n
        self.reasoning = [""] * self.n
        self.tool_calls = [ToolCallAssembler() for _ in range(self.n)]
        self.token_logprobs: list[list[TokenLogprob]] = [[] for _ in range(self.n)]
        self.reasons: list[str | None] = [None] * self.n

    def feed(self, index: int, chunk: GenerationChunk) -> None:
        if self.finished[index]:
            return
        self._count(index, chunk)
        self.texts[index] += chunk.text
        if chunk.reasoning:
            self.reasoning[index] += chunk.reasoning
        if chunk.tool_calls:
            self.tool_calls[index].feed(chunk.tool_calls)
        self.token_logprobs[index] += chunk.logprobs
        if chunk.finish_reason is not None:
            self.finished[index] = True
            self.reasons[index] = public_finish_reason(chunk.finish_reason)


class ChatReply(_Reply):
    """A `chat.completion` for `n` choices of one request, assembled from their chunks."""

    def reply(self) -> ChatCompletion:
        """The reply; a choice that never said why it ended ended as a stop."""
        choices = []
        for i in range(self.n):
            calls = self.tool_calls[i].out()
            message = ChatMessageOut("assistant", self.texts[i] if self.texts[i] or not calls else None, calls, self.reasoning[i] or None)
            choices.append(ChatChoice(i, message, self.reasons[i] or "stop", chat_logprobs(self.token_logprobs[i]) if self.logprobs else None))
        return ChatCompletion(self.id, self.created, self.model, choices, self.usage())


class CompletionReply(_Reply):
    """A `text_completion` for `n` choices, assembled from their chunks."""

    def reply(self) -> Completion:
        choices = [
            CompletionChoice(i, self.texts[i], self.reasons[i] or "stop", completion_logprobs(self.token_logprobs[i]) if self.logprobs else None)
            for i in range(self.n)
        ]
        return Completion(self.id, self.created, self.model, choices, self.usage())
