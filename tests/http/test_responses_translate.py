"""The Responses API's translation, with no model and no server: request bodies as the openai SDK
sends them (captured through an httpx mock transport that answers with our own replies, so the
SDK also parses what we send back), refusals naming the field, the GenerationPlan they make, and
the response object and stream events checked against the SDK's pydantic models."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import msgspec
import openai
import pydantic
import pytest
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseStreamEvent

from sage_daemon.control.api import RequestMeta
from sage_daemon.engines.base import ChatMessage, GenerationChunk, OutputConstraint, TokenLogprob, ToolCall, ToolCallDelta, TopLogprob
from sage_daemon.http.errors import ApiError, from_validation
from sage_daemon.http.responses import (
    ResponseDeleted,
    ResponseReply,
    ResponsesRequest,
    ResponseStream,
    conversation,
    new_response_id,
    response_echo,
    responses_plan,
    stored_conversation,
    wants_logprobs,
)
from sage_daemon.http.translate import CHAT_DEFAULT_MAX_TOKENS, GenerationPlan

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
META = RequestMeta(request_id="req-1")
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}


def decode(body: dict[str, Any]) -> ResponsesRequest:
    """As the door decodes a body: a schema error is a 400 naming the field."""
    try:
        return msgspec.json.decode(json.dumps(body).encode(), type=ResponsesRequest)
    except msgspec.ValidationError as exc:
        raise from_validation(exc) from None


def plan_of(body: dict[str, Any], history: Sequence[ChatMessage] = ()) -> GenerationPlan:
    return responses_plan(decode(body), META, tuple(history))


def refused(body: dict[str, Any], history: Sequence[ChatMessage] = ()) -> ApiError:
    with pytest.raises(ApiError) as info:
        plan_of(body, history)
    assert info.value.status == 400
    return info.value


def parse_sse(data: bytes) -> list[dict[str, Any]]:
    """The events of a stream, checking the framing and each event against the SDK's models."""
    assert data.endswith(b"\n\n")
    out = []
    for block in data.split(b"\n\n")[:-1]:
        head, body = block.split(b"\n")
        assert head.startswith(b"event: ") and body.startswith(b"data: ")
        event = json.loads(body[len(b"data: "):])
        assert head[len(b"event: "):].decode() == event["type"]
        EVENTS.validate_python(event)
        out.append(event)
    return out


def run_reply(req: ResponsesRequest, chunks: Sequence[GenerationChunk], rid: str = "resp_test") -> tuple[ResponseReply, dict[str, Any]]:
    reply = ResponseReply(id=rid, model=req.model, created_at=1_700_000_000, echo=response_echo(req), logprobs=wants_logprobs(req))
    for chunk in chunks:
        reply.feed(0, chunk)
    body = json.loads(msgspec.json.encode(reply.reply(now=1_700_000_001)))
    SdkResponse.model_validate(body)
    return reply, body


def run_stream(req: ResponsesRequest, chunks: Sequence[GenerationChunk], rid: str = "resp_test") -> tuple[ResponseStream, list[dict[str, Any]]]:
    stream = ResponseStream(id=rid, model=req.model, created_at=1_700_000_000, echo=response_echo(req), logprobs=wants_logprobs(req))
    data = stream.start() + b"".join(stream.feed(0, c) for c in chunks) + stream.end(now=1_700_000_001)
    events = parse_sse(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events))), "sequence numbers count from 0, one per event"
    assert stream.end() == b"" and stream.feed(0, GenerationChunk(text="late")) == b""
    return stream, events


TEXT_CHUNKS = [
    GenerationChunk(text="Hel", token_ids=(1,)),
    GenerationChunk(text="lo, ", token_ids=(2,)),
    GenerationChunk(text="world", token_ids=(3,), finish_reason="stop", prompt_tokens=7, completion_tokens=3, cached_prompt_tokens=4),
]
TOOL_CHUNKS = [
    GenerationChunk(reasoning="The user wants ", token_ids=(1,)),
    GenerationChunk(reasoning="the weather.", token_ids=(2,)),
    GenerationChunk(text="Let me look.", token_ids=(3,)),
    GenerationChunk(tool_calls=(ToolCallDelta(0, "call_a", "get_weather", '{"city": '),), token_ids=(4,)),
    GenerationChunk(tool_calls=(ToolCallDelta(0, None, None, '"Paris"}'), ToolCallDelta(1, "call_b", "get_weather", '{"city": "Oslo"}')), token_ids=(5,)),
    GenerationChunk(finish_reason="tool_calls", prompt_tokens=20, completion_tokens=5),
]


# -- the SDK's own bodies, and the SDK parsing our replies ----------------------------------------


class FakeDoor:
    """An httpx transport that plays the door for `POST /v1/responses`: decodes the body, plans
    it, feeds the scripted chunks through our reply or stream, and keeps what it saw."""

    def __init__(self, chunks: Sequence[GenerationChunk], history: Sequence[ChatMessage] = ()):
        self.chunks = chunks
        self.history = tuple(history)
        self.bodies: list[dict[str, Any]] = []
        self.plans: list[GenerationPlan] = []
        self.stored: list[list[ChatMessage]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/v1/responses"
        body = json.loads(request.content)
        self.bodies.append(body)
        req = decode(body)
        self.plans.append(responses_plan(req, META, self.history))
        shape: dict[str, Any] = {"id": new_response_id(), "model": req.model, "created_at": 1_700_000_000, "echo": response_echo(req), "logprobs": wants_logprobs(req)}
        if req.stream:
            stream = ResponseStream(**shape)
            data = stream.start() + b"".join(stream.feed(0, c) for c in self.chunks) + stream.end()
            self.stored.append(stored_conversation(req, self.history, stream))
            return httpx.Response(200, content=data, headers={"content-type": "text/event-stream"})
        reply = ResponseReply(**shape)
        for chunk in self.chunks:
            reply.feed(0, chunk)
        out = msgspec.json.encode(reply.reply())
        self.stored.append(stored_conversation(req, self.history, reply))
        return httpx.Response(200, content=out, headers={"content-type": "application/json"})


def sdk(door: Callable[[httpx.Request], httpx.Response]) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://door/v1", api_key="k", max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(door)))


def test_sdk_string_input_round_trip() -> None:
    door = FakeDoor(TEXT_CHUNKS)
    response = sdk(door).responses.create(model="smol", input="Say hello", instructions="Be brief.", temperature=0.2, max_output_tokens=50)
    assert door.bodies[0] == {"model": "smol", "input": "Say hello", "instructions": "Be brief.", "temperature": 0.2, "max_output_tokens": 50}
    plan = door.plans[0]
    assert plan.kind == "chat" and plan.model == "smol" and not plan.stream and plan.param_hint == "input" and len(plan.requests) == 1
    request = plan.requests[0]
    assert request.messages == (ChatMessage("system", "Be brief."), ChatMessage("user", "Say hello"))
    assert request.sampling.max_tokens == 50 and request.sampling.temperature == 0.2 and request.sampling.top_p == 1.0
    assert response.output_text == "Hello, world" and response.status == "completed" and response.id.startswith("resp_")
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (7, 3, 10)
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.instructions == "Be brief." and response.temperature == 0.2 and response.max_output_tokens == 50
    assert door.stored[0] == [ChatMessage("user", "Say hello"), ChatMessage("assistant", "Hello, world")], "instructions are not carried over"


def test_sdk_tool_loop_items_round_trip() -> None:
    """Turn one returns function calls; turn two sends the SDK's output items back with the results."""
    tools: Any = [{"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER, "strict": True}]
    door = FakeDoor(TOOL_CHUNKS)
    client = sdk(door)
    first = client.responses.create(model="smol", input=[{"role": "user", "content": "Weather in Paris and Oslo?"}], tools=tools, tool_choice="auto")
    assert door.bodies[0]["tools"] == tools
    assert [item.type for item in first.output] == ["reasoning", "message", "function_call", "function_call"]
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [("call_a", "get_weather", '{"city": "Paris"}'), ("call_b", "get_weather", '{"city": "Oslo"}')]
    assert first.output_text == "Let me look."
    request = door.plans[0].requests[0]
    assert request.tools[0].name == "get_weather" and request.tools[0].strict and request.tool_choice == "auto"

    door.chunks = TEXT_CHUNKS
    second_input: Any = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        *first.output,  # the SDK serialises its own models (reasoning, message, function calls)
        {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_b", "output": "9C"},
    ]
    second = client.responses.create(model="smol", input=second_input, tools=tools)
    sent = door.bodies[1]["input"]
    assert [i.get("type") for i in sent] == [None, "reasoning", "message", "function_call", "function_call", "function_call_output", "function_call_output"]
    assert door.plans[1].requests[0].messages == (
        ChatMessage("user", "Weather in Paris and Oslo?"),
        ChatMessage("assistant", "Let me look.", (ToolCall("call_a", "get_weather", '{"city": "Paris"}'), ToolCall("call_b", "get_weather", '{"city": "Oslo"}'))),
        ChatMessage("tool", "18C", tool_call_id="call_a"),
        ChatMessage("tool", "9C", tool_call_id="call_b"),
    )
    assert second.output_text == "Hello, world"


def test_sdk_json_schema_format() -> None:
    door = FakeDoor([GenerationChunk(text='{"city": "Paris"}', finish_reason="stop")])
    text: Any = {"format": {"type": "json_schema", "name": "place", "schema": WEATHER, "strict": True}}
    response = sdk(door).responses.create(model="smol", input="Where?", text=text)
    assert door.bodies[0]["text"] == text
    constraint = door.plans[0].requests[0].constraint
    assert constraint == OutputConstraint("json_schema", json.dumps(WEATHER, separators=(",", ":")), "text.format", name="place")
    assert json.loads(response.output_text) == {"city": "Paris"}
    assert response.text is not None and response.text.format is not None and response.text.format.type == "json_schema"


def test_sdk_stream_and_its_accumulating_helper() -> None:
    door = FakeDoor(TOOL_CHUNKS)
    client = sdk(door)
    events = list(client.responses.create(model="smol", input="hi", stream=True))
    assert door.bodies[0]["stream"] is True and door.plans[0].stream
    assert events[0].type == "response.created" and events[1].type == "response.in_progress" and events[-1].type == "response.completed"
    with client.responses.stream(model="smol", input="hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds == [e.type for e in events]
    assert final.output_text == "Let me look." and [i.type for i in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert door.stored[-1][-1] == ChatMessage("assistant", "Let me look.", (ToolCall("call_a", "get_weather", '{"city": "Paris"}'), ToolCall("call_b", "get_weather", '{"city": "Oslo"}')))


# -- refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool_type", ["web_search", "web_search_preview", "file_search", "computer_use_preview", "code_interpreter", "image_generation", "mcp", "custom"])
def test_builtin_tools_are_refused_by_name(tool_type: str) -> None:
    err = refused({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}, {"type": tool_type, "server_label": "s"}]})
    assert err.param == "tools[1].type" and repr(tool_type) in err.message


@pytest.mark.parametrize("part_type", ["input_image", "input_file", "input_audio"])
def test_non_text_parts_are_refused(part_type: str) -> None:
    body = {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "see"}, {"type": part_type, "image_url": "http://x"}]}]}
    err = refused(body)
    assert err.param == "input[0].content[1].type" and part_type in err.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"background": True}, "background"),
        ({"include": ["message.output_text.logprobs", "file_search_call.results"]}, "include[1]"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [{"type": "function", "name": "f"}]}, "tool_choice"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "f"}]}, "tools"),
        ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {"type": 5}}]}, "tools[0].parameters"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"text": {"format": {"type": "json_schema", "schema": WEATHER}}}, "text.format.name"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"truncation": "sometimes"}, "truncation"),
        ({"temperature": 3}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ],
)
def test_refusals_name_the_field(extra: dict[str, Any], param: str) -> None:
    err = refused({"model": "m", "input": "x", **extra})
    assert err.param == param, err.message


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"role": "tool", "content": "x"}, "input[0].role"),
        ({"type": "message", "content": "x"}, "input[0].role"),
        ({"role": "user"}, "input[0].content"),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[0].call_id"),
        ({"type": "function_call", "call_id": "c", "arguments": "{}"}, "input[0].name"),
        ({"type": "function_call_output", "output": "x"}, "input[0].call_id"),
        ({"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": "u"}]}, "input[0].output[0].type"),
        ({"type": "item_reference", "id": "msg_1"}, "input[0].type"),
        ({"type": "web_search_call", "id": "ws_1"}, "input[0].type"),
    ],
)
def test_bad_items_are_refused(item: dict[str, Any], param: str) -> None:
    assert refused({"model": "m", "input": [item]}).param == param


def test_empty_input_is_refused_unless_history_continues() -> None:
    assert refused({"model": "m", "input": []}).param == "input"
    assert refused({"model": "m", "instructions": "only this"}).param == "input"
    plan = plan_of({"model": "m", "input": [], "previous_response_id": "resp_1"}, [ChatMessage("user", "a"), ChatMessage("assistant", "b")])
    assert plan.requests[0].messages == (ChatMessage("user", "a"), ChatMessage("assistant", "b"))


# -- the plan -----------------------------------------------------------------------------------------


def test_plan_defaults() -> None:
    req = decode({"model": "m", "input": "hi"})
    assert req.store is None and response_echo(req).store is True
    request = responses_plan(req, META).requests[0]
    assert request.sampling.max_tokens == CHAT_DEFAULT_MAX_TOKENS and request.sampling.temperature == 1.0 and request.sampling.top_p == 1.0
    assert request.sampling.logprobs is None and request.constraint is None
    assert request.tools == () and request.tool_choice == "none" and request.parallel_tool_calls
    assert request.request_id == "req-1"


def test_plan_history_instructions_and_items() -> None:
    history = [ChatMessage("user", "earlier"), ChatMessage("assistant", "I see.")]
    body = {
        "model": "m",
        "instructions": "Be terse.",
        "input": [
            {"role": "developer", "content": "Use metric units."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "line one"}, {"type": "input_text", "text": "line two"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "ignored"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "id": "fc_1"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a": 1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
            {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"},
        ],
        "tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "g", "parameters": WEATHER, "strict": False}],
        "tool_choice": {"type": "function", "name": "g"},
        "parallel_tool_calls": False,
        "top_p": 0.5,
    }
    request = plan_of(body, history).requests[0]
    assert request.messages == (
        ChatMessage("system", "Be terse."),
        ChatMessage("user", "earlier"),
        ChatMessage("assistant", "I see."),
        ChatMessage("system", "Use metric units."),
        ChatMessage("user", "line one\nline two"),
        ChatMessage("assistant", "Checking.", (ToolCall("c1", "f", "{}"), ToolCall("c2", "g", '{"a": 1}'))),
        ChatMessage("tool", "one", tool_call_id="c1"),
        ChatMessage("tool", "two", tool_call_id="c2"),
        ChatMessage("assistant", None, (ToolCall("c3", "f", "{}"),)),
    )
    assert request.tool_choice == "g" and not request.parallel_tool_calls and request.sampling.top_p == 0.5
    assert [(t.name, t.strict, t.parameters) for t in request.tools] == [("f", True, {"type": "object", "properties": {}}), ("g", False, WEATHER)]


def test_plan_tool_choice_none_hides_tools_and_json_object_format() -> None:
    request = plan_of({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": "none", "text": {"format": {"type": "json_object"}}}).requests[0]
    assert request.tools == () and request.tool_choice == "none"
    assert request.constraint == OutputConstraint("json_object", "", "text.format")
    assert plan_of({"model": "m", "input": "x", "text": {"format": {"type": "text"}}}).requests[0].constraint is None


def test_plan_accepts_what_it_ignores() -> None:
    body = {
        "model": "m", "input": "x", "reasoning": {"effort": "low", "summary": "auto"}, "truncation": "auto", "store": False, "user": "u",
        "metadata": {"priority": "high"}, "service_tier": "auto", "include": ["reasoning.encrypted_content"], "stream_options": {"include_obfuscation": False},
        "prompt_cache_key": "k", "safety_identifier": "s", "max_tool_calls": 3, "text": {"verbosity": "low"},
    }
    req = decode(body)
    responses_plan(req, META)
    echo = response_echo(req)
    assert echo.store is False and echo.truncation == "auto" and echo.reasoning.effort == "low" and echo.metadata == {"priority": "high"}


def test_plan_logprobs_through_include() -> None:
    request = plan_of({"model": "m", "input": "x", "include": ["message.output_text.logprobs"], "top_logprobs": 2}).requests[0]
    assert request.sampling.logprobs == 2
    assert plan_of({"model": "m", "input": "x", "include": ["message.output_text.logprobs"]}).requests[0].sampling.logprobs == 0


def test_whole_conversation_without_instructions() -> None:
    req = decode({"model": "m", "instructions": "sys", "input": "q"})
    assert conversation(req, [ChatMessage("user", "a")]) == (ChatMessage("user", "a"), ChatMessage("user", "q"))


# -- replies --------------------------------------------------------------------------------------------


def test_text_reply_object() -> None:
    req = decode({"model": "m", "input": "x", "metadata": {"a": "b"}})
    reply, body = run_reply(req, TEXT_CHUNKS)
    assert body["object"] == "response" and body["id"] == "resp_test" and body["status"] == "completed"
    assert body["created_at"] == 1_700_000_000 and body["completed_at"] == 1_700_000_001
    assert body["error"] is None and body["incomplete_details"] is None and body["metadata"] == {"a": "b"}
    assert body["output"] == [{
        "type": "message", "id": "msg_test_0", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello, world", "annotations": [], "logprobs": []}],
    }]
    assert body["usage"] == {
        "input_tokens": 7, "output_tokens": 3, "total_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0},
    }
    assert "output_text" not in body
    assert SdkResponse.model_validate(body).output_text == "Hello, world"
    assert reply.output_messages() == (ChatMessage("assistant", "Hello, world"),)


def test_length_is_incomplete() -> None:
    req = decode({"model": "m", "input": "x", "max_output_tokens": 2})
    _, body = run_reply(req, [GenerationChunk(text="ab", token_ids=(1, 2), finish_reason="length", prompt_tokens=3)])
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["max_output_tokens"] == 2
    assert body["usage"]["output_tokens"] == 2


def test_reasoning_text_and_tool_calls_reply() -> None:
    req = decode({"model": "m", "input": "x", "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER}]})
    reply, body = run_reply(req, TOOL_CHUNKS)
    output = body["output"]
    assert [o["type"] for o in output] == ["reasoning", "message", "function_call", "function_call"]
    assert output[0] == {"type": "reasoning", "id": "rs_test_0", "status": "completed", "summary": [], "content": [{"type": "reasoning_text", "text": "The user wants the weather."}]}
    assert output[2] == {"type": "function_call", "id": "fc_test_2", "call_id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}', "status": "completed"}
    assert output[3]["call_id"] == "call_b" and output[3]["arguments"] == '{"city": "Oslo"}'
    assert len({o["id"] for o in output}) == 4
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == 2
    assert body["tools"] == [{"name": "get_weather", "description": None, "parameters": WEATHER, "strict": True, "type": "function"}] and body["tool_choice"] == "auto"


def test_empty_generation_is_an_empty_message() -> None:
    reply, body = run_reply(decode({"model": "m", "input": "x"}), [GenerationChunk(finish_reason="stop")])
    assert body["output"] == [] and body["status"] == "completed"
    assert reply.output_messages() == (ChatMessage("assistant", ""),)


def test_echoed_settings_validate() -> None:
    body = {
        "model": "m", "input": "x", "instructions": "i", "temperature": 0.3, "top_p": 0.9, "tools": [{"type": "function", "name": "f", "description": "d"}],
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False, "previous_response_id": "resp_prev", "user": "u",
        "text": {"format": {"type": "json_schema", "name": "n", "schema": WEATHER, "strict": True, "description": "d"}, "verbosity": "low"},
        "reasoning": {"effort": "high"}, "truncation": "auto", "store": False, "include": ["message.output_text.logprobs"], "top_logprobs": 1,
    }
    _, out = run_reply(decode(body), TEXT_CHUNKS)
    sdk_model = SdkResponse.model_validate(out)
    assert out["tool_choice"] == {"name": "f", "type": "function"} and out["previous_response_id"] == "resp_prev" and out["store"] is False
    assert out["text"]["format"] == {"type": "json_schema", "name": "n", "schema": WEATHER, "strict": True, "description": "d"}
    assert sdk_model.temperature == 0.3 and sdk_model.top_p == 0.9 and sdk_model.reasoning is not None and sdk_model.reasoning.effort == "high"
    assert out["top_logprobs"] == 1 and out["truncation"] == "auto" and out["parallel_tool_calls"] is False


# -- streams --------------------------------------------------------------------------------------------


def test_text_stream_events() -> None:
    req = decode({"model": "m", "input": "x"})
    stream, events = run_stream(req, TEXT_CHUNKS)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ]
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None and created["completed_at"] is None
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert all(d["item_id"] == "msg_test_0" and d["output_index"] == 0 and d["content_index"] == 0 and d["logprobs"] == [] for d in deltas)
    text = "".join(d["delta"] for d in deltas)
    done = next(e for e in events if e["type"] == "response.output_text.done")
    final = events[-1]["response"]
    assert text == done["text"] == final["output"][0]["content"][0]["text"] == "Hello, world"
    assert events[2]["item"] == {"type": "message", "id": "msg_test_0", "status": "in_progress", "content": [], "role": "assistant"}
    assert events[3]["part"] == {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    _, reply = run_reply(req, TEXT_CHUNKS)
    assert final == reply, "the stream's final object is the plain reply"
    assert msgspec.to_builtins(stream.response()) == final


def test_tool_stream_events() -> None:
    req = decode({"model": "m", "input": "x", "tools": [{"type": "function", "name": "get_weather"}]})
    stream, events = run_stream(req, TOOL_CHUNKS)
    kinds = [e["type"] for e in events]
    assert kinds[2:8] == [
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done",
    ]
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 4
    assert kinds[-1] == "response.completed"
    final = events[-1]["response"]
    for index, item in enumerate(final["output"]):
        added = next(e for e in events if e["type"] == "response.output_item.added" and e["output_index"] == index)
        done = next(e for e in events if e["type"] == "response.output_item.done" and e["output_index"] == index)
        assert added["item"]["id"] == done["item"]["id"] == item["id"] and done["item"] == item
        assert added["item"]["status"] == "in_progress"
        if item["type"] == "function_call":
            assert added["item"]["arguments"] == "" and added["item"]["call_id"] == item["call_id"] and added["item"]["name"] == item["name"]
            pieces = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta" and e["item_id"] == item["id"]]
            args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done" and e["item_id"] == item["id"])
            assert "".join(pieces) == args_done["arguments"] == item["arguments"]
        if item["type"] == "reasoning":
            pieces = [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"]
            assert "".join(pieces) == item["content"][0]["text"]
    _, reply = run_reply(req, TOOL_CHUNKS)
    assert final == reply
    assert stored_conversation(req, [], stream) == [
        ChatMessage("user", "x"),
        ChatMessage("assistant", "Let me look.", (ToolCall("call_a", "get_weather", '{"city": "Paris"}'), ToolCall("call_b", "get_weather", '{"city": "Oslo"}'))),
    ]


def test_incomplete_stream() -> None:
    _, events = run_stream(decode({"model": "m", "input": "x"}), [GenerationChunk(text="a", finish_reason="length", completion_tokens=1)])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["status"] == "incomplete" and events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stream_logprobs() -> None:
    top = (TopLogprob("Hi", (72, 105), -0.1), TopLogprob("Yo", (89, 111), -2.5))
    chunks = [
        GenerationChunk(text="Hi", token_ids=(5,), logprobs=(TokenLogprob("Hi", (72, 105), -0.1, top),)),
        GenerationChunk(text="!", token_ids=(6,), logprobs=(TokenLogprob("!", (33,), -0.01),), finish_reason="stop"),
    ]
    req = decode({"model": "m", "input": "x", "include": ["message.output_text.logprobs"], "top_logprobs": 2})
    _, events = run_stream(req, chunks)
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert deltas[0]["logprobs"] == [{"token": "Hi", "bytes": [72, 105], "logprob": -0.1, "top_logprobs": [
        {"token": "Hi", "bytes": [72, 105], "logprob": -0.1}, {"token": "Yo", "bytes": [89, 111], "logprob": -2.5}]}]
    final_part = events[-1]["response"]["output"][0]["content"][0]
    assert [p["token"] for p in final_part["logprobs"]] == ["Hi", "!"]


def test_stream_error_after_start_is_response_failed() -> None:
    req = decode({"model": "m", "input": "x"})
    stream = ResponseStream(id="resp_e", model="m", created_at=1, echo=response_echo(req))
    data = stream.start() + stream.feed(0, GenerationChunk(text="par"))
    data += stream.error(ApiError(503, "the engine failed", code="engine_unavailable"))
    events = parse_sse(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["code"] == "server_error"
    assert failed["response"]["error"]["message"] == "the engine failed" and failed["response"]["output"][0]["status"] == "incomplete"
    assert stream.feed(0, GenerationChunk(text="late")) == b"" and stream.end() == b"" and stream.error(ApiError(500, "x")) == b""
    final = stream.response()
    assert final is not None and final.status == "failed"


def test_stream_error_codes_and_before_start() -> None:
    req = decode({"model": "m", "input": "x"})
    stream = ResponseStream(id="resp_e", model="m", created_at=1, echo=response_echo(req))
    stream.start()
    events = parse_sse(stream.error(ApiError(429, "busy", code="queue_full").body()))
    assert events[0]["response"]["error"]["code"] == "rate_limit_exceeded"
    early = ResponseStream(id="resp_f", model="m", created_at=1, echo=response_echo(req))
    events = parse_sse(early.error(ApiError(400, "prompt too long", code="context_length_exceeded", param="input")))
    assert events == [{"type": "error", "sequence_number": 0, "code": "context_length_exceeded", "message": "prompt too long", "param": "input"}]


def test_feed_starts_the_stream_and_chunks_after_finish_are_ignored() -> None:
    req = decode({"model": "m", "input": "x"})
    stream = ResponseStream(id="resp_s", model="m", created_at=1, echo=response_echo(req))
    data = stream.feed(0, GenerationChunk(text="a", finish_reason="stop"))
    data += stream.feed(0, GenerationChunk(text="b"))
    data += stream.end()
    events = parse_sse(data)
    assert events[0]["type"] == "response.created" and events[-1]["response"]["output"][0]["content"][0]["text"] == "a"


# -- storage shapes -------------------------------------------------------------------------------------


def test_previous_response_chain() -> None:
    """Turn one is stored; turn two continues it by previous_response_id with the tool results."""
    first_req = decode({"model": "m", "instructions": "sys", "input": "Weather?", "tools": [{"type": "function", "name": "get_weather"}]})
    reply, _ = run_reply(first_req, TOOL_CHUNKS)
    stored = stored_conversation(first_req, [], reply)
    encoded = msgspec.json.encode(tuple(stored))
    history = msgspec.json.decode(encoded, type=tuple[ChatMessage, ...])
    second = decode({
        "model": "m", "instructions": "new sys", "previous_response_id": "resp_test", "tools": [{"type": "function", "name": "get_weather"}],
        "input": [{"type": "function_call_output", "call_id": "call_a", "output": "18C"}, {"type": "function_call_output", "call_id": "call_b", "output": "9C"}],
    })
    messages = responses_plan(second, META, history).requests[0].messages
    assert messages is not None
    assert messages[0] == ChatMessage("system", "new sys") and messages[1] == ChatMessage("user", "Weather?")
    assert messages[2].role == "assistant" and [c.id for c in messages[2].tool_calls] == ["call_a", "call_b"]
    assert [m.tool_call_id for m in messages[3:]] == ["call_a", "call_b"]


def test_ids_and_delete_reply() -> None:
    a, b = new_response_id(), new_response_id()
    assert a.startswith("resp_") and a != b
    assert json.loads(msgspec.json.encode(ResponseDeleted(a))) == {"id": a, "object": "response", "deleted": True}
