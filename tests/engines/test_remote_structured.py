"""Structured output and tools through the remote engine (the path vLLM serves through): passed on
to the server, and tool calls and reasoning read back. Two real servers: the session's live SAGE
daemon (llama.cpp behind a real OpenAI-compatible door), and a scripted loopback server that
records the request body and replays a vLLM stream with reasoning_content and tool-call deltas."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from sage_daemon.engines.base import ChatMessage, GenerationRequest, OutputConstraint, SamplingParams, ToolCall, ToolSpec
from sage_daemon.engines.remote import RemoteOpenAIEngine, RemoteSpec
from tests.engines.test_remote import ScriptedRemote, collect

GREEDY = SamplingParams(temperature=0.0, max_tokens=120)
WEATHER = ToolSpec("get_weather", "The current weather in a city", {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]})
ASK = (ChatMessage("user", "What's the weather in Paris?"),)


@pytest.mark.slow
async def test_constraints_and_tools_pass_through_to_a_sage_daemon(live: Any) -> None:
    from tests.conftest import KEY

    engine = RemoteOpenAIEngine(RemoteSpec(name="via-sage", kind="llm", base_url=live.url + "/v1", remote_model="smollm2", api_key=KEY))
    await engine.load()
    try:
        schema = {"type": "object", "properties": {"greeting": {"type": "string", "maxLength": 20}}, "required": ["greeting"]}
        chunks = await collect(engine, GenerationRequest("json", GREEDY, messages=ASK, constraint=OutputConstraint("json_schema", json.dumps(schema), name="greet")))
        jsonschema.validate(json.loads("".join(c.text for c in chunks)), schema)

        regex = await collect(engine, GenerationRequest("re", GREEDY, messages=ASK, constraint=OutputConstraint("regex", "[0-9]{4}", "guided_regex")))
        assert len("".join(c.text for c in regex)) == 4 and "".join(c.text for c in regex).isdigit()

        called = await collect(engine, GenerationRequest("tool", GREEDY, messages=ASK, tools=(WEATHER,), tool_choice="get_weather"))
        deltas = [d for c in called for d in c.tool_calls]
        assert called[-1].finish_reason == "tool_calls" and deltas[0].name == "get_weather" and deltas[0].id
        arguments = "".join(d.arguments for d in deltas if d.index == 0)
        jsonschema.validate(json.loads(arguments), WEATHER.parameters)

        history = (*ASK, ChatMessage("assistant", None, tool_calls=(ToolCall(deltas[0].id, "get_weather", arguments),)), ChatMessage("tool", '{"sky": "sunny"}', tool_call_id=deltas[0].id))
        answer = await collect(engine, GenerationRequest("answer", GREEDY, messages=history, tools=(WEATHER,), tool_choice="none"))
        assert "".join(c.text for c in answer) and answer[-1].finish_reason in ("stop", "length")
    finally:
        await engine.unload()


def _events(*payloads: dict[str, Any]) -> list[bytes]:
    return [f"data: {json.dumps(p)}\n\n".encode() for p in payloads] + [b"data: [DONE]\n\n"]


async def test_a_vllm_stream_with_reasoning_and_tool_calls_is_read_back() -> None:
    seen: list[dict[str, Any]] = []

    def chat(body: dict[str, Any]) -> list[bytes]:
        seen.append(body)
        delta = lambda d, reason=None: {"choices": [{"index": 0, "delta": d, "finish_reason": reason}]}  # noqa: E731
        return _events(
            delta({"role": "assistant", "reasoning_content": "The user wants "}),
            delta({"reasoning_content": "the weather."}),
            delta({"tool_calls": [{"index": 0, "id": "chatcmpl-tool-1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            delta({}, "tool_calls"),
            {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}},
        )

    remote = ScriptedRemote({"/v1/chat/completions": chat})
    engine = RemoteOpenAIEngine(RemoteSpec(name="r", kind="llm", base_url=remote.url, remote_model="m"))
    try:
        await engine.load()
        history = (*ASK, ChatMessage("assistant", None, tool_calls=(ToolCall("c1", "get_weather", '{"city": "Rome"}'),)), ChatMessage("tool", "rainy", tool_call_id="c1"))
        constraint = OutputConstraint("json_schema", json.dumps({"type": "object"}), name="answer")
        chunks = await collect(engine, GenerationRequest("v", GREEDY, messages=history, tools=(WEATHER,), tool_choice="required", parallel_tool_calls=False, constraint=constraint))
    finally:
        await engine.unload()
        remote.close()
    body = seen[0]
    assert body["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": WEATHER.description, "parameters": WEATHER.parameters}}]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True}}
    assert body["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}
    assert body["messages"][2] == {"role": "tool", "content": "rainy", "tool_call_id": "c1"}
    assert "".join(c.reasoning for c in chunks) == "The user wants the weather."
    deltas = [d for c in chunks for d in c.tool_calls]
    assert deltas[0].id == "chatcmpl-tool-1" and deltas[0].name == "get_weather"
    assert "".join(d.arguments for d in deltas) == '{"city": "Paris"}'
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].completion_tokens == 12
