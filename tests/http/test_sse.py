"""The SSE framing alone: chunks in, bytes out, no I/O."""

from __future__ import annotations

import json

from sage_daemon.engines.base import GenerationChunk
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
