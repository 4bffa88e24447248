"""The Responses and Messages doors against the live daemon (SmolLM2 on llama.cpp), through
clients nobody here wrote: the `openai` SDK's `client.responses` (plain, streamed with its
event helpers, a function-tool loop, `previous_response_id`, `text.format` json_schema, get and
delete) and the `anthropic` SDK's `client.messages` (create, stream, count_tokens, a tool loop,
`x-api-key`), bad inputs in each API's own error shape, and the daemon serving on."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import KEY, LiveDaemon

pytestmark = pytest.mark.slow

anthropic = pytest.importorskip("anthropic")

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}
FUNCTION = {"type": "function", "name": "get_weather", "description": "The current weather in a city", "parameters": WEATHER_SCHEMA}
GREEDY = {"temperature": 0}  # the anthropic SDK 2.x no longer takes temperature as an argument; the API does
ANTHROPIC_TOOL = {"name": "get_weather", "description": "The current weather in a city", "input_schema": WEATHER_SCHEMA}


def claude(live: LiveDaemon) -> Any:
    return anthropic.Anthropic(base_url=live.url, api_key=KEY, max_retries=0, timeout=120)


# -- /v1/responses ----------------------------------------------------------------------------


def test_responses_plain_streamed_and_stored(live: LiveDaemon) -> None:
    with live.sdk() as client:
        first = client.responses.create(model="smollm2", input="What is the capital of France?", instructions="Answer briefly.", max_output_tokens=200, temperature=0)
        assert first.status in ("completed", "incomplete") and first.output_text and first.id.startswith("resp_")
        assert first.usage is not None and first.usage.input_tokens > 5 and 0 < first.usage.output_tokens <= 200

        # A bounded format, so that the reply completes (the SDK's helper wants response.completed).
        place = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": False}
        with client.responses.stream(
            model="smollm2", input="What is the capital of France?", max_output_tokens=60, temperature=0,
            text={"format": {"type": "json_schema", "name": "place", "schema": place, "strict": True}},
        ) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        assert "".join(deltas) == final.output_text and final.status == "completed" and final.usage is not None
        jsonschema.validate(json.loads(final.output_text), place)

        second = client.responses.create(model="smollm2", input="And of Germany?", previous_response_id=first.id, max_output_tokens=16, temperature=0)
        assert second.previous_response_id == first.id
        assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens  # the first turn is in the prompt

        assert client.responses.retrieve(first.id).output_text == first.output_text
        client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="smollm2", input="x", previous_response_id=first.id)


def test_responses_function_tool_loop_and_json_schema(live: LiveDaemon) -> None:
    with live.sdk() as client:
        called = client.responses.create(
            model="smollm2", input="What's the weather in Paris?", tools=[FUNCTION], tool_choice="required", max_output_tokens=80, temperature=0,
        )
        calls = [item for item in called.output if item.type == "function_call"]
        assert calls and calls[0].name == "get_weather"
        jsonschema.validate(json.loads(calls[0].arguments), WEATHER_SCHEMA)
        answer = client.responses.create(
            model="smollm2", previous_response_id=called.id, tools=[FUNCTION], tool_choice="none", max_output_tokens=30, temperature=0,
            input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": json.dumps({"sky": "sunny", "celsius": 18})}],
        )
        assert answer.output_text and not [i for i in answer.output if i.type == "function_call"]

        schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}}, "required": ["city", "country"], "additionalProperties": False}
        shaped = client.responses.create(
            model="smollm2", input="Name a city.", max_output_tokens=60, temperature=0,
            text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
        )
    jsonschema.validate(json.loads(shaped.output_text), schema)


# -- /v1/messages -------------------------------------------------------------------------------


def test_messages_create_stream_and_count_tokens(live: LiveDaemon) -> None:
    client = claude(live)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.messages.create(model="smollm2", max_tokens=24, system="Answer briefly.", messages=messages, extra_body=GREEDY)
    assert reply.type == "message" and reply.role == "assistant" and reply.content[0].type == "text" and reply.content[0].text
    assert reply.stop_reason in ("end_turn", "max_tokens") and reply.usage.input_tokens > 5

    with client.messages.stream(model="smollm2", max_tokens=24, system="Answer briefly.", messages=messages, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == reply.content[0].text  # greedy: the same either way

    counted = client.messages.count_tokens(model="smollm2", system="Answer briefly.", messages=messages)
    assert counted.input_tokens == reply.usage.input_tokens


def test_messages_tool_loop(live: LiveDaemon) -> None:
    client = claude(live)
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = client.messages.create(model="smollm2", max_tokens=80, messages=messages, tools=[ANTHROPIC_TOOL], tool_choice={"type": "any"}, extra_body=GREEDY)
    uses = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER_SCHEMA)
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny, 18 C"}]},
    ]
    second = client.messages.create(model="smollm2", max_tokens=40, messages=messages, tools=[ANTHROPIC_TOOL], tool_choice={"type": "none"}, extra_body=GREEDY)
    assert second.content[0].type == "text" and second.content[0].text and second.stop_reason in ("end_turn", "max_tokens")

    with client.messages.stream(model="smollm2", max_tokens=80, messages=messages[:1], tools=[ANTHROPIC_TOOL], tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert [b.input for b in final.content if b.type == "tool_use"] == [uses[0].input]


def test_errors_in_each_apis_shape(live: LiveDaemon) -> None:
    client = claude(live)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["type"] == "error" and missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="smollm2", max_tokens=8, messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]}])
    assert bad.value.body["error"]["type"] == "invalid_request_error" and "image" in bad.value.body["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=live.url, api_key="wrong", max_retries=0).messages.create(model="smollm2", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    raw = httpx.post(live.url + "/v1/messages", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}, json={"model": "smollm2", "messages": []}, timeout=30)
    assert raw.status_code == 400 and raw.json()["type"] == "error"

    with live.sdk() as openai_client:
        with pytest.raises(openai.BadRequestError) as tool:
            openai_client.responses.create(model="smollm2", input="hi", tools=[{"type": "web_search"}])
        assert "web_search" in str(tool.value) and tool.value.body["param"].startswith("tools[0]")
        with pytest.raises(openai.BadRequestError) as image:
            openai_client.responses.create(model="smollm2", input=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}])
        assert image.value.body["param"].startswith("input[0].content[0]")
        assert openai_client.responses.create(model="smollm2", input="still serving?", max_output_tokens=4).status in ("completed", "incomplete")
