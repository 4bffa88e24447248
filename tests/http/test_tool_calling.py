"""Tool calling against the real daemon and SmolLM2 (a template without tools: the generic JSON
format, constrained by llguidance): `tool_choice` required and named always give a valid call
(the name among the tools, arguments valid by their schema), plain and streamed; `none` never
does; a two-turn loop (call → tool result → answer); the openai SDK's `parse` with a Pydantic
tool and its streaming helper; LangChain's `bind_tools` and `with_structured_output`."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pydantic
import pytest

from tests.conftest import KEY, LiveDaemon

pytestmark = pytest.mark.slow

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TIME_PARAMS = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 30}}, "required": ["timezone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city", "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "The current time in a timezone", "parameters": TIME_PARAMS}},
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
PROMPTS = ["What's the weather in Paris?", "What time is it in Tokyo?", "Tell me a joke.", "Is it raining in Berlin right now?"]


def _check_calls(calls: list[dict[str, Any]], only: str | None = None) -> None:
    assert calls, "no tool call"
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        name = call["function"]["name"]
        assert name in SCHEMAS and (only is None or name == only), call
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])


def _streamed_calls(http: Any, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None, str]:
    """The calls a stream assembles by OpenAI's rules (first delta: index, id, name; then argument pieces)."""
    calls: dict[int, dict[str, Any]] = {}
    finish, content = None, ""
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                delta = choice["delta"]
                content += delta.get("content") or ""
                for piece in delta.get("tool_calls") or ():
                    call = calls.setdefault(piece["index"], {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                    call["id"] = piece.get("id") or call["id"]
                    function = piece.get("function") or {}
                    call["function"]["name"] += function.get("name") or ""
                    call["function"]["arguments"] += function.get("arguments") or ""
                finish = choice["finish_reason"] or finish
    return [calls[i] for i in sorted(calls)], finish, content


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}], ids=["required", "named"])
def test_required_and_named_always_give_a_valid_call(live: LiveDaemon, choice: Any) -> None:
    only = choice["function"]["name"] if isinstance(choice, dict) else None
    with live.http() as http:
        for seed, prompt in enumerate(PROMPTS):
            for parallel in (True, False):
                body = {
                    "model": "smollm2", "messages": [{"role": "user", "content": prompt}], "tools": TOOLS, "tool_choice": choice,
                    "parallel_tool_calls": parallel, "max_tokens": 250, "temperature": 0.8, "seed": seed,
                }
                reply = http.post("/v1/chat/completions", json=body)
                assert reply.status_code == 200, reply.text
                out = reply.json()["choices"][0]
                assert out["finish_reason"] == "tool_calls" and out["message"]["content"] is None, out
                _check_calls(out["message"]["tool_calls"], only)
                assert parallel or len(out["message"]["tool_calls"]) == 1

                calls, finish, content = _streamed_calls(http, body)
                assert finish == "tool_calls" and content == ""
                _check_calls(calls, only)


def test_none_never_calls(live: LiveDaemon) -> None:
    with live.http() as http:
        for seed, prompt in enumerate(PROMPTS):
            body = {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "tools": TOOLS, "tool_choice": "none", "max_tokens": 40, "seed": seed}
            out = http.post("/v1/chat/completions", json=body).json()["choices"][0]
            assert "tool_calls" not in out["message"] and out["finish_reason"] in ("stop", "length") and out["message"]["content"]
            calls, finish, content = _streamed_calls(http, body)
            assert calls == [] and finish in ("stop", "length") and content


def test_auto_answers_or_calls_validly(live: LiveDaemon) -> None:
    with live.http() as http:
        for seed, prompt in enumerate(PROMPTS):
            body = {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "tools": TOOLS, "max_tokens": 250, "temperature": 0.8, "seed": seed}
            out = http.post("/v1/chat/completions", json=body).json()["choices"][0]
            if out["finish_reason"] == "tool_calls":
                _check_calls(out["message"]["tool_calls"])
            else:
                assert out["finish_reason"] in ("stop", "length") and "tool_calls" not in out["message"]
                assert not out["message"]["content"].lstrip().startswith('{"tool_call'), "a call must not leak into content"


def test_a_two_turn_tool_loop_with_the_sdk(live: LiveDaemon) -> None:
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
    with live.sdk() as client:
        first = client.chat.completions.create(model="smollm2", messages=messages, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=100, temperature=0)
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        city = json.loads(call.function.arguments)["city"]
        messages += [first.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": city, "temperature": 18, "sky": "sunny"})}]
        second = client.chat.completions.create(model="smollm2", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=60, temperature=0)
        alone = client.chat.completions.create(model="smollm2", messages=messages[:1], tools=TOOLS, tool_choice="none", max_tokens=1)
    answer = second.choices[0].message
    assert answer.content and not answer.tool_calls and second.choices[0].finish_reason in ("stop", "length")
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 20  # the call and its result are in the prompt


class GetWeather(pydantic.BaseModel):
    """The current weather in a city."""

    city: str = pydantic.Field(max_length=30)
    unit: str = pydantic.Field(pattern="^(celsius|fahrenheit)$")


def test_openai_sdk_pydantic_tools_with_parse_and_stream(live: LiveDaemon) -> None:
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    tool = openai.pydantic_function_tool(GetWeather)
    with live.sdk() as client:
        parsed = client.chat.completions.parse(model="smollm2", messages=messages, tools=[tool], tool_choice="required", max_tokens=100, temperature=0)
        call = parsed.choices[0].message.tool_calls[0]
        assert isinstance(call.function.parsed_arguments, GetWeather)
        with client.chat.completions.stream(model="smollm2", messages=messages, tools=[tool], tool_choice="required", max_tokens=100, temperature=0) as stream:
            done = [event for event in stream if event.type == "tool_calls.function.arguments.done"]
    assert len(done) >= 1 and done[0].name == "GetWeather" and isinstance(done[0].parsed_arguments, GetWeather)
    assert done[0].parsed_arguments == call.function.parsed_arguments  # greedy: the same call either way


def test_langchain_bind_tools_and_with_structured_output(live: LiveDaemon) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool as lc_tool

    @lc_tool
    def get_time(timezone: str) -> str:
        """The current time in a timezone."""
        return "12:00"

    llm = langchain_openai.ChatOpenAI(model="smollm2", base_url=live.url + "/v1", api_key=KEY, temperature=0, max_tokens=100, max_retries=0)
    message = llm.bind_tools([get_time], tool_choice="get_time").invoke("What time is it in Tokyo?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_time" and isinstance(message.tool_calls[0]["args"]["timezone"], str)

    class Answer(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=30)
        country: str = pydantic.Field(max_length=30)

    answer = llm.with_structured_output(Answer).invoke("Name a city and its country.")
    assert isinstance(answer, Answer) and answer.city
