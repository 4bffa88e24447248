"""Structured output against the real daemon and SmolLM2 (llama.cpp, constrained by llguidance):
`response_format` json_schema for 20 varied schemas, plain and streamed, each reply validated
by `jsonschema`; json_object; llama-server's `grammar`; vLLM's guided_*/structured_outputs; the
openai SDK's `chat.completions.parse` with a Pydantic model and its streaming helper; and every
bad constraint a 400 naming its field while the daemon keeps serving."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
import pydantic
import pytest

from tests.conftest import LiveDaemon

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "Give me an example as JSON."}]

ADDRESS = {
    "type": "object",
    "properties": {"street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
    "required": ["street", "city", "zip"],
    "additionalProperties": False,
}

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": ["string", "null"]}}, "required": ["ok", "note"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}}, "required": ["tags"]},
    {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["score"]},
    {"type": "object", "properties": {"address": ADDRESS}, "required": ["address"]},
    {
        "type": "object",
        "properties": {"people": {"type": "array", "items": {"$ref": "#/$defs/person"}, "minItems": 1, "maxItems": 2}},
        "required": ["people"],
        "$defs": {"person": {"type": "object", "properties": {"first": {"type": "string"}, "last": {"type": "string"}}, "required": ["first", "last"]}},
    },
    {
        "type": "object",
        "properties": {"pet": {"anyOf": [
            {"type": "object", "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}}, "required": ["kind", "lives"]},
            {"type": "object", "properties": {"kind": {"const": "dog"}, "breed": {"type": "string"}}, "required": ["kind", "breed"]},
        ]}},
        "required": ["pet"],
    },
    {"type": "object", "properties": {"when": {"type": "string", "format": "date"}}, "required": ["when"]},
    {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"]},
    {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}, "required": ["at"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}, "required": ["code"]},
    {"type": "object", "properties": {"word": {"type": "string", "minLength": 2, "maxLength": 8}}, "required": ["word"]},
    {"type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2, 3]}, "m": {"const": "fixed"}}, "required": ["n", "m"]},
    {
        "type": "object",
        "properties": {"matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 2}, "maxItems": 2}},
        "required": ["matrix"],
    },
    {  # recursive: a tree whose nodes may have children
        "type": "object",
        "properties": {"tree": {"$ref": "#/$defs/node"}},
        "required": ["tree"],
        "$defs": {"node": {"type": "object", "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
        }, "required": ["name"]}},
    },
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {"c": {"type": "integer"}}, "required": ["c"]}}, "required": ["b"]}}, "required": ["a"]},
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 20}, "year": {"type": "integer", "minimum": 1900, "maximum": 2100}, "rating": {"enum": ["G", "PG", "R"]}}, "required": ["title", "year", "rating"], "additionalProperties": False},
    {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}, "required": ["email"]},
]


def _bounded(schema: Any) -> Any:
    """The schema with every free string at most 24 characters and every free integer at most
    1000: a 135M-parameter model left free inside a string or a number can fill it until
    max_tokens (the grammar keeps it valid, not short)."""
    if isinstance(schema, list):
        return [_bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded(v) for k, v in schema.items()}
    types = out.get("type") if isinstance(out.get("type"), list) else [out.get("type")]
    if "string" in types and not {"maxLength", "pattern", "format", "enum", "const"} & out.keys():
        out["maxLength"] = 24
    if "integer" in types and not {"maximum", "enum", "const"} & out.keys():
        out["maximum"] = 1000  # digits too: "1000000011111..." until max_tokens is a valid integer
    return out


def _body(schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": "smollm2", "messages": ASK, "max_tokens": 200, "temperature": 0.7, "seed": 7,
        "response_format": {"type": "json_schema", "json_schema": {"name": "example", "schema": _bounded(schema), "strict": True}}, **extra,
    }


def _plain(http: Any, body: dict[str, Any]) -> tuple[str, str]:
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def _streamed(http: Any, body: dict[str, Any]) -> tuple[str, str]:
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finishes) == 1
    return text, finishes[0]


def test_twenty_schemas_give_valid_json_plain_and_streamed(live: LiveDaemon) -> None:
    """Every reply that ends (`stop`) validates. A 135M model sometimes repeats inside a valid
    document until max_tokens (`length`, a valid prefix); another seed is then tried, and each
    schema must give a complete, valid document within three."""
    assert len(SCHEMAS) == 20
    with live.http() as http:
        for i, schema in enumerate(SCHEMAS):
            for get in (_plain, _streamed):
                for seed in (7, 8, 9):
                    text, finish = get(http, _body(schema, seed=seed))
                    assert finish in ("stop", "length"), (i, finish)
                    if finish == "stop":
                        jsonschema.validate(json.loads(text), schema)
                        break
                    assert text.startswith(("{", "[")), (i, text)
                else:
                    pytest.fail(f"schema {i}: no complete document in three tries ({get.__name__})")


def test_json_object_and_length_mid_json(live: LiveDaemon) -> None:
    with live.http() as http:
        reply = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": ASK, "max_tokens": 300, "temperature": 0, "response_format": {"type": "json_object"}}).json()
        choice = reply["choices"][0]
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(choice["message"]["content"]), dict)
        short = http.post("/v1/chat/completions", json={**_body(SCHEMAS[18]), "max_tokens": 4}).json()["choices"][0]
    assert short["finish_reason"] == "length" and short["message"]["content"].startswith("{")


def test_grammar_regex_and_choice_extensions(live: LiveDaemon) -> None:
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"grammar": 'root ::= "yes" | "no"'}, lambda t: t in ("yes", "no")),
        ({"guided_regex": "[0-9]{3}-[0-9]{4}"}, lambda t: re.fullmatch(r"[0-9]{3}-[0-9]{4}", t)),
        ({"guided_choice": ["Paris", "London"]}, lambda t: t in ("Paris", "London")),
        ({"guided_json": SCHEMAS[1]}, lambda t: json.loads(t)["color"] in ("red", "green", "blue")),
        ({"structured_outputs": {"regex": "(cat|dog)s?"}}, lambda t: re.fullmatch("(cat|dog)s?", t)),
        ({"structured_outputs": {"choice": ["A", "B"]}}, lambda t: t in ("A", "B")),
        ({"json_schema": SCHEMAS[13]}, lambda t: json.loads(t)["n"] in (1, 2, 3)),
    ]
    with live.http() as http:
        for extra, check in cases:
            reply = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": ASK, "max_tokens": 60, "temperature": 0, **extra})
            assert reply.status_code == 200, (extra, reply.text)
            choice = reply.json()["choices"][0]
            assert choice["finish_reason"] == "stop" and check(choice["message"]["content"]), (extra, choice)


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}}, "response_format", "not a valid JSON Schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(?<=a)b"}}}}, "response_format", "look-around"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}}, "response_format", "name"),
    ({"guided_regex": "[a-"}, "guided_regex", "unclosed character class"),
    ({"grammar": "root ::= undefined_rule"}, "grammar", "undefined_rule"),
    ({"guided_choice": []}, "guided_choice", ""),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex", "one structured-output constraint"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
]


def test_bad_constraints_are_400s_naming_the_field_and_the_daemon_keeps_serving(live: LiveDaemon) -> None:
    with live.http() as http:
        for extra, param, words in BAD:
            reply = http.post("/v1/chat/completions", json={"model": "smollm2", "messages": ASK, "max_tokens": 8, **extra})
            assert reply.status_code == 400, (extra, reply.status_code, reply.text)
            error = reply.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"].startswith(param), (extra, error)
            assert words in error["message"], (extra, error)
        ok = http.post("/v1/chat/completions", json=_body(SCHEMAS[1]))
    assert ok.status_code == 200 and json.loads(ok.json()["choices"][0]["message"]["content"])["color"] in ("red", "green", "blue")


class City(pydantic.BaseModel):
    name: str
    country: str
    population: int
    kind: Literal["capital", "town"]


def test_openai_sdk_parse_and_its_streaming_helper(live: LiveDaemon) -> None:
    messages = [{"role": "user", "content": "Describe Paris."}]
    with live.sdk() as client:
        parsed = client.chat.completions.parse(model="smollm2", messages=messages, response_format=City, max_tokens=120, temperature=0)
        city = parsed.choices[0].message.parsed
        assert isinstance(city, City) and city.kind in ("capital", "town")

        with client.chat.completions.stream(model="smollm2", messages=messages, response_format=City, max_tokens=120, temperature=0) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
    streamed = final.choices[0].message.parsed
    assert isinstance(streamed, City) and streamed == city  # greedy: the same object either way
