"""The SSE framing alone: chunks in, bytes out, no I/O."""

from __future__ import annotations

import json

from sage_daemon.engines.base import GenerationChunk, TokenLogprob, TopLogprob
from sage_daemon.http.errors import ApiError
from sage_daemon.http.sse import ChatStream, CompletionStream, event


def events(data: bytes) -> list[object]:
    assert data.endswith(b"\n\n")
    out: list[object] = []
    for block in data.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: "), block
        payload = block[len(b"data: "):]
        assert b"\n" not in payload
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


def test_event_is_one_data_line() -> None:
    assert event({"a": "line\nbreak"}) == b'data: {"a":"line\\nbreak"}\n\n'


def test_chat_stream_role_first_then_content_then_finish_then_usage_then_done() -> None:
    stream = ChatStream(id="chatcmpl-1", model="m", created=7, include_usage=True)
    out = stream.start()
    out += stream.feed(0, GenerationChunk(text="Hel", token_ids=(1,)))
    out += stream.feed(0, GenerationChunk(text="lo", token_ids=(2,)))
    out += stream.feed(0, GenerationChunk(text="!", finish_reason="length", prompt_tokens=5, completion_tokens=3))
    out += stream.end()
    got = events(out)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" and c["model"] == "m" and c["created"] == 7 for c in chunks)
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["Hel", "lo", "!"]
    assert chunks[4]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length", "logprobs": None}
    assert chunks[5]["choices"] == [] and chunks[5]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert all(c["usage"] is None for c in chunks[:5])


def test_chat_stream_without_usage_ends_with_done_only() -> None:
    stream = ChatStream(id="x", model="m", created=0)
    out = stream.start() + stream.feed(0, GenerationChunk(finish_reason="stop")) + stream.end()
    got = events(out)
    assert got[-1] == "[DONE]" and got[-2]["choices"][0]["finish_reason"] == "stop"
    assert stream.end() == b"", "a closed stream writes nothing more"


def test_engine_reasons_become_openai_reasons() -> None:
    stream = ChatStream(id="x", model="m", created=0)
    got = events(stream.feed(0, GenerationChunk(finish_reason="cancelled")))
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}, "role comes first even when start() was skipped"
    assert got[-1]["choices"][0]["finish_reason"] == "stop"


def test_error_after_start_is_an_error_event_then_done() -> None:
    stream = ChatStream(id="x", model="m", created=0)
    stream.start()
    stream.feed(0, GenerationChunk(text="a"))
    got = events(stream.error(ApiError(503, "engine died", code="engine_unavailable").body()))
    assert got == [{"error": {"message": "engine died", "type": "server_error", "param": None, "code": "engine_unavailable"}}, "[DONE]"]
    assert stream.feed(0, GenerationChunk(text="late")) == b"" and stream.end() == b""


def test_n_choices_share_their_prompt_in_usage() -> None:
    stream = ChatStream(id="x", model="m", created=0, n=2, include_usage=True)
    out = stream.start()
    assert [c["choices"][0]["index"] for c in events(out)] == [0, 1]
    out = stream.feed(1, GenerationChunk(text="b", finish_reason="stop", prompt_tokens=4, completion_tokens=1))
    assert not stream.all_finished
    stream.feed(0, GenerationChunk(text="a", finish_reason="stop", prompt_tokens=4, completion_tokens=2))
    assert stream.all_finished
    assert events(stream.end())[0]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_completion_stream_text_chunks_and_usage_per_prompt() -> None:
    stream = CompletionStream(id="cmpl-1", model="g", created=1, n=2, include_usage=True, prompt_of=[0, 1])
    out = stream.start()
    out += stream.feed(0, GenerationChunk(text="a"))
    out += stream.feed(0, GenerationChunk(text="b", finish_reason="stop", prompt_tokens=2, completion_tokens=2))
    out += stream.feed(1, GenerationChunk(text="c", finish_reason="length", prompt_tokens=3, completion_tokens=1))
    out += stream.end()
    got = events(out)
    assert got[-1] == "[DONE]"
    assert [(c["choices"][0]["index"], c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in got[:3]] == [(0, "a", None), (0, "b", "stop"), (1, "c", "length")]
    assert all(c["object"] == "text_completion" for c in got[:-1])
    assert got[3]["choices"] == [] and got[3]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def lp(token: str, logprob: float, *top: tuple[str, float]) -> TokenLogprob:
    return TokenLogprob(token, tuple(token.encode()), logprob, tuple(TopLogprob(t, tuple(t.encode()), v) for t, v in top))


def test_chat_stream_carries_each_content_event_s_logprobs_when_asked() -> None:
    stream = ChatStream(id="c", model="m", created=1, logprobs=True)
    out = stream.feed(0, GenerationChunk(text="Hi", token_ids=(1,), logprobs=(lp("Hi", -0.1, ("Hi", -0.1), ("Yo", -2.5)),)))
    out += stream.feed(0, GenerationChunk(text=" there", token_ids=(2,), finish_reason="stop", logprobs=(lp(" there", -0.7),)))
    chunks = events(out + stream.end())[:-1]
    assert chunks[0]["choices"][0]["logprobs"] is None  # the role event
    assert chunks[1]["choices"][0]["logprobs"] == {
        "content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
            {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}, {"token": "Yo", "logprob": -2.5, "bytes": [89, 111]}]}],
        "refusal": None,
    }
    assert chunks[2]["choices"][0]["logprobs"]["content"][0]["token"] == " there"
    assert chunks[3]["choices"][0]["finish_reason"] == "stop" and chunks[3]["choices"][0]["logprobs"] is None
    plain = ChatStream(id="c", model="m", created=1)  # not asked: null even if the engine sent some
    assert events(plain.feed(0, GenerationChunk(text="Hi", logprobs=(lp("Hi", -0.1),))))[1]["choices"][0]["logprobs"] is None


def test_completion_stream_logprobs_count_text_offsets_across_events() -> None:
    stream = CompletionStream(id="c", model="m", created=1, logprobs=True)
    out = stream.feed(0, GenerationChunk(text="ab", logprobs=(lp("a", -1.0, ("b", -0.5)), lp("b", -0.2))))
    out += stream.feed(0, GenerationChunk(text="cd", finish_reason="length", logprobs=(lp("cd", -0.3),)))
    first, second = (c["choices"][0]["logprobs"] for c in events(out))
    assert first == {"tokens": ["a", "b"], "token_logprobs": [-1.0, -0.2], "top_logprobs": [{"b": -0.5, "a": -1.0}, {"b": -0.2}], "text_offset": [0, 1]}
    assert second == {"tokens": ["cd"], "token_logprobs": [-0.3], "top_logprobs": [{"cd": -0.3}], "text_offset": [2]}


# -- the non-streamed reply: ChatReply / CompletionReply ------------------------------------------


def test_chat_reply_gathers_each_choice_and_counts_usage_once_per_prompt() -> None:
    from sage_daemon.http.sse import ChatReply

    reply = ChatReply(id="chatcmpl-1", model="m", created=7, n=2, logprobs=True)
    top = TokenLogprob("Hi", (72, 105), -0.1, (TopLogprob("Hi", (72, 105), -0.1),))
    reply.feed(1, GenerationChunk(text="Yo", token_ids=(9,)))
    reply.feed(0, GenerationChunk(text="Hi", token_ids=(1,), logprobs=(top,)))
    reply.feed(0, GenerationChunk(text="!", finish_reason="length", prompt_tokens=4, completion_tokens=2))
    reply.feed(0, GenerationChunk(text="late"))  # after its finish: ignored
    reply.feed(1, GenerationChunk(finish_reason="cancelled", prompt_tokens=4))
    body = reply.reply()
    assert body.object == "chat.completion" and (body.id, body.model, body.created) == ("chatcmpl-1", "m", 7)
    assert [(c.index, c.message.role, c.message.content, c.finish_reason) for c in body.choices] == [(0, "assistant", "Hi!", "length"), (1, "assistant", "Yo", "stop")]
    assert body.choices[0].logprobs.content[0].token == "Hi" and body.choices[1].logprobs.content == []
    assert (body.usage.prompt_tokens, body.usage.completion_tokens, body.usage.total_tokens) == (4, 3, 7)


def test_completion_reply_without_logprobs_and_a_choice_that_never_finished() -> None:
    from sage_daemon.http.sse import CompletionReply

    reply = CompletionReply(id="cmpl-1", model="m", created=7, n=2, prompt_of=[0, 1])
    reply.feed(0, GenerationChunk(text="a", finish_reason="stop", prompt_tokens=3, completion_tokens=1))
    reply.feed(1, GenerationChunk(text="b", token_ids=(5,), prompt_tokens=2))
    body = reply.reply()
    assert [(c.text, c.finish_reason, c.logprobs) for c in body.choices] == [("a", "stop", None), ("b", "stop", None)]
    assert (body.usage.prompt_tokens, body.usage.completion_tokens) == (5, 2), "two prompts, each counted"
