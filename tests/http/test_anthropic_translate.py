"""Anthropic's Messages API as translation alone: bodies in, plans and bytes out; no daemon, no model.

Where the `anthropic` SDK is installed, replies and events are also checked against its pydantic
models, and the SDK itself sends requests to (and reads replies from) an httpx mock transport.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from sage_daemon.control.api import RequestMeta
from sage_daemon.engines.base import ChatMessage, GenerationChunk, ToolCall, ToolCallDelta, ToolSpec
from sage_daemon.http.anthropic import (
    CountTokensReply,
    CountTokensRequest,
    MessageReply,
    MessagesRequest,
    MessageStream,
    body_metadata,
    count_tokens_messages,
    error_body,
    message_id,
    messages_plan,
)
from sage_daemon.http.errors import ApiError

try:
    import anthropic
    from pydantic import TypeAdapter
except ImportError:  # the SDK checks are skipped without it
    anthropic = None  # type: ignore[assignment]
try:  # the SDK's HTTP library: httpx2 from anthropic 2.x on, httpx before
    import httpx2 as httpx
except ImportError:
    import httpx  # type: ignore[no-redef]

needs_sdk = pytest.mark.skipif(anthropic is None, reason="the anthropic SDK is not installed")

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def decode(body: dict[str, Any], kind: type = MessagesRequest) -> Any:
    return msgspec.json.decode(json.dumps(body), type=kind)


def body(**fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
    out.update(fields)
    return out


def plan_of(**fields: Any) -> Any:
    return messages_plan(decode(body(**fields)), RequestMeta(request_id="req-abc"), "smollm2")


def request_of(**fields: Any) -> Any:
    return plan_of(**fields).requests[0]


def refused(**fields: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        plan_of(**fields)
    assert info.value.status == 400
    return info.value


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """`event: NAME\\ndata: {...}\\n\\n` blocks as (name, data), checking the framing."""
    assert data.endswith(b"\n\n")
    out = []
    for block in data.split(b"\n\n")[:-1]:
        lines = block.split(b"\n")
        assert len(lines) == 2 and lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), block
        name = lines[0][len(b"event: "):].decode()
        payload = json.loads(lines[1][len(b"data: "):])
        assert payload["type"] == name
        out.append((name, payload))
    return out


def check_events(got: list[tuple[str, dict[str, Any]]]) -> None:
    if anthropic is None:
        return
    adapter = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    for name, payload in got:
        if name not in ("ping", "error"):  # not in the SDK's union; the SDK handles them itself
            adapter.validate_python(payload)


def check_message(payload: dict[str, Any]) -> None:
    if anthropic is not None:
        anthropic.types.Message.model_validate(payload)


def reply_json(reply: MessageReply) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(msgspec.json.encode(reply.reply()))
    check_message(payload)
    return payload


# -- decoding -----------------------------------------------------------------------------------


def test_the_sdks_shapes_decode() -> None:
    req = decode(body(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "use the tool", "signature": "sig"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "3 C"}], "is_error": False}]},
        ],
        tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["\n\nHuman:"], stream=True,
        metadata={"user_id": "u-1", "priority": "high"},
        thinking={"type": "enabled", "budget_tokens": 2048}, service_tier="auto", some_future_field=1,
    ))
    assert req.max_tokens == 64 and req.stream and req.temperature == 0.5
    assert body_metadata(req) == {"user_id": "u-1", "priority": "high"}
    assert body_metadata(decode(body(metadata={"user_id": None}))) == {}
    count = decode({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER]}, CountTokensRequest)
    assert count_tokens_messages(count).messages == (ChatMessage("user", "Hi"),)


@pytest.mark.parametrize("change", [
    {"max_tokens": None},
    {"max_tokens": 0},
    {"messages": []},
    {"temperature": 1.5},
    {"top_p": -0.1},
    {"stop_sequences": ["a", "b", "c", "d", "e"]},
    {"messages": [{"role": "tool", "content": "x"}]},
    {"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "bad name!", "input": {}}]}]},
    {"tools": [{**WEATHER, "name": "x" * 65}]},
    {"tool_choice": {"type": "sometimes"}},
    {"tool_choice": {"type": "tool"}},
    {"model": ""},
])
def test_bodies_the_schema_refuses(change: dict[str, Any]) -> None:
    raw = body()
    for key, value in change.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    with pytest.raises(msgspec.ValidationError):
        decode(raw)


# -- messages_plan ------------------------------------------------------------------------------


def test_plan_is_one_chat_request_with_sampling() -> None:
    meta = RequestMeta(request_id="req-abc")
    plan = messages_plan(decode(body(temperature=0.2, top_p=0.8, top_k=5, stop_sequences=["END", ""], stream=True)), meta, "resolved")
    assert plan.kind == "chat" and plan.model == "resolved" and plan.stream and plan.param_hint == "messages"
    assert plan.metas == [meta] and plan.prompt_of == [0] and len(plan.requests) == 1
    sampling = plan.requests[0].sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k, sampling.stop) == (64, 0.2, 0.8, 5, ("END",))
    default = request_of().sampling
    assert (default.temperature, default.top_p, default.top_k, default.stop) == (1.0, 1.0, 0, ())
    assert request_of().request_id == "req-abc" and request_of().tools == () and request_of().tool_choice == "none"
    assert not plan_of().stream


def test_system_comes_first_and_text_blocks_are_joined() -> None:
    req = request_of(system=[{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}], messages=[
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
        {"role": "user", "content": [{"type": "text", "text": "e"}]},  # consecutive turns merge, as Anthropic's
    ])
    assert req.messages == (
        ChatMessage("system", "One.\nTwo."), ChatMessage("user", "a\nb"), ChatMessage("assistant", "c"), ChatMessage("user", "d\ne"),
    )
    assert request_of(system="Sys").messages[0] == ChatMessage("system", "Sys")
    assert request_of(system="").messages == (ChatMessage("user", "Hi"),)


def test_tool_use_and_tool_result_round_trip() -> None:
    req = request_of(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "two calls", "signature": "s"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "text", "text": "Here:"},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "3 C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "data"}], "is_error": True},
        ]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]},
    ])
    assert req.messages == (
        ChatMessage("user", "Weather in Oslo and Rome?"),
        ChatMessage("assistant", "Checking.", tool_calls=(ToolCall("toolu_1", "get_weather", '{"city":"Oslo"}'), ToolCall("toolu_2", "get_weather", '{"city":"Rome"}'))),
        ChatMessage("tool", "3 C", tool_call_id="toolu_1", name="get_weather"),
        ChatMessage("tool", "Error: no\ndata", tool_call_id="toolu_2", name="get_weather"),
        ChatMessage("user", "Here:"),
        ChatMessage("assistant", None, tool_calls=(ToolCall("toolu_3", "get_weather", "{}"),)),
        ChatMessage("tool", "", tool_call_id="toolu_3", name="get_weather"),
    )
    assert req.tools == (ToolSpec("get_weather", "The weather in a city.", WEATHER["input_schema"]),)
    assert req.tool_choice == "auto" and req.parallel_tool_calls


def test_system_role_messages_and_an_empty_final_assistant_turn() -> None:
    req = request_of(messages=[
        {"role": "system", "content": "Rules."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": []},
    ])
    assert req.messages == (ChatMessage("system", "Rules."), ChatMessage("user", "Hi"))
    prefill = request_of(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Sure: "}])
    assert prefill.messages[-1] == ChatMessage("assistant", "Sure: ")


@pytest.mark.parametrize(("choice", "name", "parallel"), [
    (None, "auto", True),
    ({"type": "auto"}, "auto", True),
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ({"type": "any"}, "required", True),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ({"type": "tool", "name": "get_weather"}, "get_weather", True),
    ({"type": "none"}, "none", True),
])
def test_tool_choice(choice: dict[str, Any] | None, name: str, parallel: bool) -> None:
    req = request_of(tools=[WEATHER], **({"tool_choice": choice} if choice else {}))
    assert (req.tool_choice, req.parallel_tool_calls) == (name, parallel)
    assert len(req.tools) == (0 if name == "none" else 1)


def test_tool_choice_refusals() -> None:
    assert refused(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_time"}).param == "tool_choice.name"
    assert refused(tool_choice={"type": "any"}).param == "tool_choice"
    assert request_of(tool_choice={"type": "auto"}).tool_choice == "none", "auto without tools: nothing to call"


def test_tool_refusals() -> None:
    assert refused(tools=[{"type": "web_search_20250305", "name": "web_search"}]).param == "tools[0].type"
    assert refused(tools=[{"name": "f"}]).param == "tools[0].input_schema"
    assert refused(tools=[{"name": "f", "input_schema": {"type": 5}}]).param == "tools[0].input_schema"
    assert refused(tools=[WEATHER, WEATHER]).param == "tools"
    assert refused(mcp_servers=[{"type": "url", "url": "https://x", "name": "x"}]).param == "mcp_servers"
    assert request_of(tools=[{**WEATHER, "type": "custom", "strict": True}]).tools[0].strict


def test_block_refusals_name_the_block() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    err = refused(messages=[{"role": "user", "content": [{"type": "text", "text": "see"}, image]}])
    assert err.param == "messages[0].content[1].type" and "'image'" in err.message and err.code == "unsupported_parameter"
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    assert refused(messages=[{"role": "user", "content": [doc]}]).param == "messages[0].content[0].type"
    nested = [{"type": "tool_result", "tool_use_id": "t", "content": [image]}]
    assert refused(messages=[{"role": "user", "content": nested}]).param == "messages[0].content[0].content[0].type"
    misplaced = refused(messages=[{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}])
    assert misplaced.param == "messages[0].content[0]"
    assert refused(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]).param == "messages[0].content[0]"
    assert refused(messages=[{"role": "user", "content": []}]).param == "messages[0].content"
    empty_middle = [{"role": "user", "content": "a"}, {"role": "assistant", "content": []}, {"role": "user", "content": "b"}]
    assert refused(messages=empty_middle).param == "messages[1].content"


def test_output_config_format_is_a_json_schema_constraint() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    constraint = request_of(output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "high"}).constraint
    assert constraint is not None and constraint.kind == "json_schema" and json.loads(constraint.value) == schema
    assert constraint.param == "output_config.format"
    assert request_of(output_config={"effort": "low"}).constraint is None


def test_count_tokens_conversation_and_reply() -> None:
    req = decode({"model": "m", "system": "S", "messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER], "tool_choice": {"type": "any"}}, CountTokensRequest)
    conv = count_tokens_messages(req)
    assert conv.messages == (ChatMessage("system", "S"), ChatMessage("user", "Hi"))
    assert [t.name for t in conv.tools] == ["get_weather"] and conv.tool_choice == "required"
    gen = conv.request("req-1")
    assert gen.messages == conv.messages and gen.tools == conv.tools and gen.request_id == "req-1" and gen.sampling.max_tokens == 1
    assert msgspec.json.encode(CountTokensReply(42)) == b'{"input_tokens":42}'
    if anthropic is not None:
        anthropic.types.MessageTokensCount.model_validate_json(msgspec.json.encode(CountTokensReply(42)))


# -- MessageReply -------------------------------------------------------------------------------


def test_reply_with_text() -> None:
    reply = MessageReply(message_id("req-xyz"), "smollm2")
    reply.feed(0, GenerationChunk(text="Hel", token_ids=(1,), prompt_tokens=9))
    reply.feed(0, GenerationChunk(text="lo", finish_reason="stop", prompt_tokens=9, completion_tokens=2))
    reply.feed(0, GenerationChunk(text="ignored after the end"))
    assert reply_json(reply) == {
        "type": "message", "id": "msg_xyz", "role": "assistant", "model": "smollm2",
        "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 2},
    }


def test_reply_with_reasoning_and_tool_calls() -> None:
    reply = MessageReply("msg_1", "m")
    reply.feed(0, GenerationChunk(reasoning="think ", token_ids=(1,)))
    reply.feed(0, GenerationChunk(reasoning="more", text="Calling.", token_ids=(2,)))
    reply.feed(0, GenerationChunk(tool_calls=(ToolCallDelta(0, "call_a", "get_weather"), ToolCallDelta(0, arguments='{"city":'))))
    reply.feed(0, GenerationChunk(tool_calls=(ToolCallDelta(0, arguments='"Oslo"}'), ToolCallDelta(1, "call_b", "get_weather", '{"city":"Rome"}'))))
    reply.feed(0, GenerationChunk(finish_reason="tool_calls", prompt_tokens=20, completion_tokens=30))
    got = reply_json(reply)
    assert got["content"] == [
        {"type": "thinking", "thinking": "think more", "signature": ""},
        {"type": "text", "text": "Calling."},
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    assert got["stop_reason"] == "tool_use" and got["usage"] == {"input_tokens": 20, "output_tokens": 30}


def test_reply_stop_reasons_and_odd_arguments() -> None:
    reply = MessageReply("msg_1", "m")
    reply.feed(0, GenerationChunk(text="cut", finish_reason="length", prompt_tokens=3, completion_tokens=64))
    assert reply_json(reply)["stop_reason"] == "max_tokens"
    called = MessageReply("msg_1", "m")
    called.feed(0, GenerationChunk(tool_calls=(ToolCallDelta(0, "c", "f", "not json"), ToolCallDelta(1, None, "g", "[1]"), ToolCallDelta(2, "e", "h"))))
    called.feed(0, GenerationChunk(finish_reason="stop"))
    got = reply_json(called)
    assert got["stop_reason"] == "tool_use", "a reply that calls tools ends for the tools"
    assert [b["input"] for b in got["content"]] == [{"arguments": "not json"}, {"arguments": "[1]"}, {}]
    assert got["content"][1]["id"] == "toolu_1_1", "a call without an id gets one"
    empty = MessageReply("msg_1", "m")
    empty.feed(0, GenerationChunk(finish_reason="cancelled"))
    assert reply_json(empty)["content"] == [] and reply_json(empty)["stop_reason"] == "end_turn"


# -- MessageStream ------------------------------------------------------------------------------


def deltas(got: list[tuple[str, dict[str, Any]]], index: int, field: str) -> str:
    return "".join(d["delta"][field] for n, d in got if n == "content_block_delta" and d["index"] == index)


def test_stream_of_text() -> None:
    stream = MessageStream("msg_1", "smollm2")
    assert stream.start() == b"", "message_start waits for the first chunk (it knows the prompt's tokens)"
    out = stream.feed(0, GenerationChunk(text="Hel", token_ids=(1,), prompt_tokens=11))
    out += stream.feed(0, GenerationChunk(text="lo!", token_ids=(2,), prompt_tokens=11))
    out += stream.feed(0, GenerationChunk(finish_reason="stop", prompt_tokens=11, completion_tokens=2))
    out += stream.end()
    got = events(out)
    check_events(got)
    assert [n for n, _ in got] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]
    start = got[0][1]["message"]
    assert start == {
        "type": "message", "id": "msg_1", "role": "assistant", "model": "smollm2", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 1},
    }
    assert got[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert got[3][1] == {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}
    assert deltas(got, 0, "text") == "Hello!"
    assert got[5][1] == {"type": "content_block_stop", "index": 0}
    assert got[6][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 2, "input_tokens": 11}}
    assert stream.end() == b"" and stream.feed(0, GenerationChunk(text="late")) == b""


def test_stream_of_reasoning_text_and_tool_calls() -> None:
    stream = MessageStream("msg_1", "m")
    out = stream.start()
    out += stream.feed(0, GenerationChunk(reasoning="Let me ", token_ids=(1,)))
    out += stream.feed(0, GenerationChunk(reasoning="think.", text="Sure.", token_ids=(2,)))
    out += stream.feed(0, GenerationChunk(tool_calls=(ToolCallDelta(0, "call_a", "get_weather"), ToolCallDelta(0, arguments='{"city":'))))
    out += stream.feed(0, GenerationChunk(tool_calls=(ToolCallDelta(0, arguments='"Oslo"}'),)))
    out += stream.feed(0, GenerationChunk(tool_calls=(ToolCallDelta(1, "call_b", "get_weather", '{"city":"Rome"}'),)))
    out += stream.feed(0, GenerationChunk(finish_reason="tool_calls", prompt_tokens=5, completion_tokens=40))
    out += stream.end()
    got = events(out)
    check_events(got)
    assert [(n, d.get("index")) for n, d in got if n.startswith("content_block_") and n != "content_block_delta"] == [
        ("content_block_start", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_stop", 2),
        ("content_block_start", 3), ("content_block_stop", 3),
    ]
    starts = [d["content_block"] for n, d in got if n == "content_block_start"]
    assert starts == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}},
    ]
    assert deltas(got, 0, "thinking") == "Let me think." and deltas(got, 1, "text") == "Sure."
    assert json.loads(deltas(got, 2, "partial_json")) == {"city": "Oslo"} and json.loads(deltas(got, 3, "partial_json")) == {"city": "Rome"}
    assert {d["delta"]["type"] for n, d in got if n == "content_block_delta"} == {"thinking_delta", "text_delta", "input_json_delta"}
    assert got[-2][1]["delta"]["stop_reason"] == "tool_use" and got[-2][1]["usage"]["output_tokens"] == 40
    assert got[0][1]["message"]["usage"]["input_tokens"] == 0, "the first chunk did not know it"
    assert got[-2][1]["usage"]["input_tokens"] == 5, "message_delta carries the final count"


def test_stream_switching_back_to_text_opens_a_new_block() -> None:
    stream = MessageStream("msg_1", "m")
    out = stream.feed(0, GenerationChunk(text="a"))
    out += stream.feed(0, GenerationChunk(reasoning="r"))
    out += stream.feed(0, GenerationChunk(text="b", finish_reason="length"))
    got = events(out + stream.end())
    check_events(got)
    assert [d["content_block"]["type"] for n, d in got if n == "content_block_start"] == ["text", "thinking", "text"]
    assert deltas(got, 0, "text") == "a" and deltas(got, 2, "text") == "b"
    assert got[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_stream_without_chunks_and_stream_errors() -> None:
    got = events(MessageStream("msg_1", "m").end())
    check_events(got)
    assert [n for n, _ in got] == ["message_start", "ping", "message_delta", "message_stop"]
    stream = MessageStream("msg_1", "m")
    out = stream.feed(0, GenerationChunk(text="par"))
    out += stream.error(503, "the engine failed")
    got = events(out)
    assert got[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "the engine failed"}})
    assert stream.end() == b"" and stream.error(500, "again") == b"", "the stream ended with the error"
    assert events(MessageStream("msg_1", "m").error(400, "bad")) == [("error", {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})]


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"), (404, "not_found_error"),
    (405, "invalid_request_error"), (408, "timeout_error"), (413, "request_too_large"), (422, "invalid_request_error"),
    (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (503, "overloaded_error"), (504, "timeout_error"),
    (529, "overloaded_error"),
])
def test_error_body(status: int, kind: str) -> None:
    got = error_body(status, "why")
    assert got == {"type": "error", "error": {"type": kind, "message": "why"}}
    if anthropic is not None and kind != "request_too_large":  # documented by Anthropic, absent from the SDK's union
        anthropic.types.ErrorResponse.model_validate(got)


# -- the SDK against the translation, through a mock transport -----------------------------------


def _sdk_client(respond: Any, seen: list[dict[str, Any]]) -> Any:
    def handler(request: Any) -> Any:
        assert request.url.path == "/v1/messages"
        raw = json.loads(request.content)
        seen.append(raw)
        plan = messages_plan(decode(raw), RequestMeta(request_id="req-sdk"), "smollm2")
        return respond(plan)

    return anthropic.Anthropic(api_key="k", base_url="http://sage.test", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(handler)))


TOOL_CHUNKS = [
    GenerationChunk(reasoning="weather: use the tool", prompt_tokens=30),
    GenerationChunk(text="Checking.", prompt_tokens=30),
    GenerationChunk(tool_calls=(ToolCallDelta(0, "call_a", "get_weather"), ToolCallDelta(0, arguments='{"city": "Os'))),
    GenerationChunk(tool_calls=(ToolCallDelta(0, arguments='lo"}'),)),
    GenerationChunk(finish_reason="tool_calls", prompt_tokens=30, completion_tokens=12),
]


@needs_sdk
def test_sdk_create_round_trip() -> None:
    seen: list[dict[str, Any]] = []

    def respond(plan: Any) -> Any:
        req = plan.requests[0]
        assert req.tool_choice == "get_weather" and not req.parallel_tool_calls and req.messages[0] == ChatMessage("system", "Be brief.")
        reply = MessageReply(message_id(plan.metas[0].request_id), plan.model)
        for chunk in TOOL_CHUNKS:
            reply.feed(0, chunk)
        return httpx.Response(200, content=msgspec.json.encode(reply.reply()), headers={"content-type": "application/json"})

    client = _sdk_client(respond, seen)
    message = client.messages.create(
        model="claude-x", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}, metadata={"user_id": "u"},
    )
    assert message.id == "msg_sdk" and message.model == "smollm2" and message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    tool_use = message.content[2]
    assert tool_use.type == "tool_use" and tool_use.input == {"city": "Oslo"} and tool_use.id == "call_a"
    assert message.usage.input_tokens == 30 and message.usage.output_tokens == 12
    # The reply goes back as the SDK builds the next turn; it decodes and translates.
    follow_up = [
        {"role": "user", "content": "Weather in Oslo?"}, message.to_param(),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_a", "content": "3 C"}]},
    ]
    plan = messages_plan(decode({"model": "m", "max_tokens": 10, "messages": json.loads(json.dumps(follow_up, default=lambda o: o.model_dump()))}), RequestMeta(request_id="r"), "m")
    assert (plan.requests[0].messages or ())[1:] == (
        ChatMessage("assistant", "Checking.", tool_calls=(ToolCall("call_a", "get_weather", '{"city":"Oslo"}'),)),
        ChatMessage("tool", "3 C", tool_call_id="call_a", name="get_weather"),
    )


@needs_sdk
def test_sdk_stream_round_trip() -> None:
    seen: list[dict[str, Any]] = []

    def respond(plan: Any) -> Any:
        assert plan.stream
        stream = MessageStream(message_id(plan.metas[0].request_id), plan.model)
        data = stream.start() + b"".join(stream.feed(0, c) for c in TOOL_CHUNKS) + stream.end()
        return httpx.Response(200, content=data, headers={"content-type": "text/event-stream"})

    client = _sdk_client(respond, seen)
    with client.messages.stream(model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert seen[0]["stream"] is True
    assert "".join(texts) == "Checking."
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 12 and final.usage.input_tokens == 30
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].type == "thinking" and final.content[0].thinking == "weather: use the tool"
    assert final.content[2].type == "tool_use" and final.content[2].input == {"city": "Oslo"}


@needs_sdk
def test_sdk_raises_a_stream_error_event() -> None:
    def respond(plan: Any) -> Any:
        stream = MessageStream("msg_1", plan.model)
        data = stream.feed(0, GenerationChunk(text="par")) + stream.error(503, "the engine failed")
        return httpx.Response(200, content=data, headers={"content-type": "text/event-stream"})

    client = _sdk_client(respond, [])
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]) as stream:
            stream.until_done()
    assert "the engine failed" in str(info.value)
