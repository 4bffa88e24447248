"""The HTTP door against the in-test control plane: validation, error mapping, SSE, auth, CORS,
request ids, priorities, metrics and a disconnect mid-stream, over real HTTP (httpx)."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from sage_daemon.control.api import Priority
from tests.http.conftest import FakeDaemon

CHAT = {"model": "chatty", "messages": [{"role": "user", "content": "hi"}]}


def sse_events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        out.append("[DONE]" if payload == "[DONE]" else json.loads(payload))
    return out


def assert_error(r: httpx.Response, status: int, *, param: str | None = ..., code: str | None = ..., type: str | None = None) -> dict[str, Any]:  # noqa: A002
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    if param is not ...:
        assert body["error"]["param"] == param, body
    if code is not ...:
        assert body["error"]["code"] == code, body
    if type is not None:
        assert body["error"]["type"] == type, body
    assert r.headers.get("x-request-id")
    return body["error"]


# -- happy paths ------------------------------------------------------------------------------


async def test_chat_completion_shape_and_request_id(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "mine-123"})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "mine-123"
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == "chatty" and body["id"].startswith("chatcmpl-")
        assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello world, again!"}, "finish_reason": "stop", "logprobs": None}]
        assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
        r2 = await c.get("/v1/models")
        assert r2.headers["x-request-id"].startswith("req-") and r2.headers["x-request-id"] != "mine-123"


async def test_chat_request_becomes_a_generation_request(fake: FakeDaemon) -> None:
    body = {
        "model": "chatty",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        ],
        "max_completion_tokens": 2, "temperature": 0.3, "top_p": 0.9, "seed": 5, "stop": "x",
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "user": "u1", "response_format": {"type": "text"},
    }
    async with fake.client() as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    model, kind, request, meta = fake.control.seen[-1]
    assert (model, kind) == ("chatty", "chat")
    assert [(m.role, m.content) for m in request.messages] == [("system", "be brief"), ("user", "one\ntwo")]
    sp = request.sampling
    assert (sp.max_tokens, sp.temperature, sp.top_p, sp.seed, sp.stop, sp.presence_penalty, sp.frequency_penalty) == (2, 0.3, 0.9, 5, ("x",), 0.5, -0.5)
    assert meta.request_id == request.request_id and meta.priority == Priority.NORMAL and meta.caller == "http"


async def test_chat_stream_with_usage(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == "Hello world, again!"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 5


async def test_n_choices_run_concurrently(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "n": 3, "max_tokens": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [ch["index"] for ch in body["choices"]] == [0, 1, 2]
        assert all(ch["message"]["content"] == "Hello world" for ch in body["choices"])
        assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7}
        r = await c.post("/v1/chat/completions", json={**CHAT, "n": 2, "stream": True})
        events = sse_events(r.text)
        assert events[-1] == "[DONE]"
        for index in (0, 1):
            mine = [e for e in events[:-1] if e["choices"][0]["index"] == index]
            assert "".join(e["choices"][0]["delta"].get("content", "") for e in mine) == "Hello world, again!"
            assert mine[-1]["choices"][0]["finish_reason"] == "stop"
    assert len({meta.request_id for _, _, _, meta in fake.control.seen}) == 5


async def test_completions_prompt_forms(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        r = await c.post("/v1/completions", json={"model": "base", "prompt": "once"})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "text_completion" and body["choices"][0]["text"] == "Hello world, again!"
        assert fake.control.seen[-1][2].sampling.max_tokens == 16, "OpenAI's default max_tokens for completions"
        r = await c.post("/v1/completions", json={"model": "base", "prompt": ["a", "b c"], "max_tokens": 1})
        assert [(ch["index"], ch["text"]) for ch in r.json()["choices"]] == [(0, "Hello"), (1, "Hello")]
        assert r.json()["usage"]["prompt_tokens"] == 3
        r = await c.post("/v1/completions", json={"model": "base", "prompt": [1, 2, 3]})
        assert r.status_code == 200 and fake.control.seen[-1][2].prompt_tokens == (1, 2, 3)
        r = await c.post("/v1/completions", json={"model": "base", "prompt": [[1], [2, 3]]})
        assert r.status_code == 200 and len(r.json()["choices"]) == 2
        assert_error(await c.post("/v1/completions", json={"model": "base", "prompt": ["a", 1]}), 400, param="prompt")
        r = await c.post("/v1/completions", json={"model": "base", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}})
        events = sse_events(r.text)
        assert events[-1] == "[DONE]" and events[-2]["usage"]["total_tokens"] == 6
        assert "".join(e["choices"][0]["text"] for e in events[:-2]) == "Hello world, again!"


async def test_embeddings_float_and_base64(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        r = await c.post("/v1/embeddings", json={"model": "emb", "input": ["a b", "c"]})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "list" and body["model"] == "emb"
        assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
        floats = [d["embedding"] for d in body["data"]]
        r = await c.post("/v1/embeddings", json={"model": "emb", "input": ["a b", "c"], "encoding_format": "base64"})
        for d, expected in zip(r.json()["data"], floats, strict=True):
            raw = base64.b64decode(d["embedding"])
            assert list(struct.unpack("<4f", raw)) == pytest.approx(expected, abs=1e-7)
        r = await c.post("/v1/embeddings", json={"model": "emb", "input": "one", "dimensions": 4})
        assert r.status_code == 200 and len(r.json()["data"]) == 1


async def test_embedding_errors(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        assert_error(await c.post("/v1/embeddings", json={"model": "emb", "input": "x", "dimensions": 2}), 400, param="dimensions")
        assert_error(await c.post("/v1/embeddings", json={"model": "emb", "input": [1, 2]}), 400, param="input")
        assert_error(await c.post("/v1/embeddings", json={"model": "emb", "input": ["ok", ""]}), 400, param="input[1]")
        assert_error(await c.post("/v1/embeddings", json={"model": "emb", "input": ["x"] * 2049}), 400, param="input")
        assert_error(await c.post("/v1/embeddings", json={"model": "emb", "input": []}), 400, param="input")
        assert_error(await c.post("/v1/embeddings", json={"model": "emb", "input": "x", "encoding_format": "int8"}), 400, param="encoding_format")
        assert_error(await c.post("/v1/embeddings", json={"model": "chatty", "input": "x"}), 400, param="model")
        assert_error(await c.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404, code="model_not_found")


async def test_models_list_and_retrieve(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        body = (await c.get("/v1/models")).json()
        assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["chatty", "base", "emb"]
        assert body["data"][0] | {"created": 0} == {
            "id": "chatty", "object": "model", "created": 0, "owned_by": "sage", "kind": "llm", "backend": "fake",
            "state": "ready", "max_model_len": 512, "dimensions": None, "chat_template": True,
        }
        assert (await c.get("/v1/models/emb")).json()["dimensions"] == 4
        assert_error(await c.get("/v1/models/nope"), 404, param="model", code="model_not_found")


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"logit_bias": {"the": 1}}, "logit_bias"),
        ({"logit_bias": {"42": -101}}, "logit_bias"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0].type"),
        ({"model": ""}, "model"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "{oops"}}}, "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "nope"}}}}}]}, "tools[0].function.parameters"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[0].tool_calls"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"metadata": {"priority": "urgent"}}, "metadata.priority"),
    ],
)
async def test_invalid_chat_requests_are_400_naming_the_field(fake: FakeDaemon, patch: dict[str, Any], param: str) -> None:
    async with fake.client() as c:
        error = assert_error(await c.post("/v1/chat/completions", json={**CHAT, **patch}), 400, param=param, type="invalid_request_error")
    if "image_url" in json.dumps(patch):
        assert "image_url" in error["message"]
    if "functions" in patch:
        assert "not supported" in error["message"]


async def test_missing_required_field(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        error = assert_error(await c.post("/v1/chat/completions", json={"messages": CHAT["messages"]}), 400)
    assert "model" in error["message"]


async def test_malformed_bodies_and_content_types(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        h = {"content-type": "application/json"}
        assert_error(await c.post("/v1/chat/completions", content=b'{"model": "chatty", ', headers=h), 400, code="invalid_json")
        assert_error(await c.post("/v1/chat/completions", content=b"[1, 2]", headers=h), 400)
        assert_error(await c.post("/v1/chat/completions", content=b"", headers=h), 400, code="invalid_json")
        assert_error(await c.post("/v1/chat/completions", content=b"\xff\xfe", headers=h), 400, code="invalid_json")
        assert_error(await c.post("/v1/chat/completions", content=json.dumps(CHAT), headers={"content-type": "text/plain"}), 415, param="Content-Type")
        assert_error(await c.post("/v1/chat/completions", content=json.dumps(CHAT)), 415)
        r = await c.post("/v1/chat/completions", content=json.dumps(CHAT), headers={"content-type": "application/json; charset=utf-8"})
        assert r.status_code == 200


async def test_oversized_body_is_413(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon(("http.max_body_bytes", 2048))
    async with fake.client() as c:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
        error = assert_error(await c.post("/v1/chat/completions", json=big), 413, code="request_too_large")
        assert "2048" in error["message"]

        async def chunked() -> Any:  # no Content-Length: the limit holds while reading
            for _ in range(8):
                yield b" " * 1024

        assert_error(await c.post("/v1/embeddings", content=chunked(), headers={"content-type": "application/json"}), 413)
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_unknown_route_and_method(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        assert_error(await c.get("/v1/nothing"), 404, code="unknown_route", type="not_found_error")
        assert_error(await c.post("/v2/chat/completions", json=CHAT), 404)
        r = await c.get("/v1/chat/completions")
        assert_error(r, 405, code="method_not_allowed")
        assert "POST" in r.headers["allow"]
        assert_error(await c.delete("/v1/models"), 405)


async def test_control_plane_errors_map_to_statuses(fake: FakeDaemon) -> None:
    def say(text: str, model: str = "chatty") -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": text}]}

    async with fake.client() as c:
        assert_error(await c.post("/v1/chat/completions", json=say("hi", "nope")), 404, code="model_not_found")
        r = await c.post("/v1/chat/completions", json=say("QUEUE_FULL"))
        assert_error(r, 429, code="queue_full", type="rate_limit_error")
        assert r.headers["retry-after"] == "3"
        r = await c.post("/v1/chat/completions", json={**say("QUEUE_FULL"), "stream": True})
        assert_error(r, 429), "an error before the first token is an HTTP status, not an SSE event"
        error = assert_error(await c.post("/v1/chat/completions", json=say("OVERFLOW")), 400, code="context_length_exceeded", param="messages")
        assert "512" in error["message"] and "600" in error["message"]
        assert_error(await c.post("/v1/chat/completions", json=say("hi", "base")), 400, code="chat_template_missing")


async def test_a_bug_is_a_500_with_the_request_id_and_no_traceback(fake: FakeDaemon, caplog: pytest.LogCaptureFixture) -> None:
    async with fake.client() as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "BUG"}]}, headers={"x-request-id": "bug-1"})
    error = assert_error(r, 500, code="internal_error", type="server_error")
    assert "bug-1" in error["message"] and "Traceback" not in r.text and "fake" not in r.text
    assert any("bug-1" in str(getattr(rec, "fields", {})) for rec in caplog.records)


async def test_error_mid_stream_is_an_sse_error_event_then_done(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "FAIL_MIDSTREAM"}], "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert events[-2] == {"error": {"message": "engine for model 'chatty' died", "type": "server_error", "param": None, "code": "engine_unavailable"}}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == "Hello world"


# -- scheduling hints ---------------------------------------------------------------------------


async def test_priority_and_deadline_reach_request_meta(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        await c.post("/v1/chat/completions", json=CHAT, headers={"X-SAGE-Priority": "High", "X-SAGE-Deadline-Ms": "1500"})
        meta = fake.control.seen[-1][3]
        assert meta.priority == Priority.HIGH and meta.deadline_s == 1.5
        await c.post("/v1/chat/completions", json={**CHAT, "metadata": {"priority": "background"}})
        assert fake.control.seen[-1][3].priority == Priority.BACKGROUND
        await c.post("/v1/chat/completions", json={**CHAT, "metadata": {"priority": "background"}}, headers={"X-SAGE-Priority": "critical"})
        assert fake.control.seen[-1][3].priority == Priority.CRITICAL, "the header wins"
        await c.post("/v1/embeddings", json={"model": "emb", "input": "x"}, headers={"X-SAGE-Priority": "low"})
        assert fake.control.embedded[-1][2].priority == Priority.LOW
        error = assert_error(await c.post("/v1/chat/completions", json=CHAT, headers={"X-SAGE-Priority": "asap"}), 400, param="X-SAGE-Priority")
        assert "asap" in error["message"] and "background" in error["message"]
        for bad in ("soon", "-5", "0", "nan", "inf"):
            assert_error(await c.post("/v1/chat/completions", json=CHAT, headers={"X-SAGE-Deadline-Ms": bad}), 400, param="X-SAGE-Deadline-Ms")


# -- auth and CORS --------------------------------------------------------------------------------


async def test_no_keys_no_auth(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        assert (await c.get("/v1/models")).status_code == 200
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer whatever"})).status_code == 200


async def test_api_keys_guard_v1_only(make_fake_daemon: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# ops\n\nfile-key\n")
    fake = await make_fake_daemon(("http.api_keys", ["sk-one", "sk-two"]), ("http.api_key_file", str(key_file)))
    async with fake.client() as c:
        assert_error(await c.get("/v1/models"), 401, code="missing_api_key", type="authentication_error")
        assert_error(await c.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"}), 401, code="invalid_api_key")
        assert_error(await c.get("/v1/models", headers={"Authorization": "Basic sk-one"}), 401)
        assert_error(await c.get("/v1/nothing"), 401), "unknown /v1 routes do not tell a stranger what exists"
        assert_error(await c.post("/v1/chat/completions", json=CHAT), 401)
        for key in ("sk-one", "sk-two", "file-key"):
            assert (await c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})).status_code == 200
        assert (await c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "bearer sk-two"})).status_code == 200
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
        key_file.write_text("rotated\n")
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer rotated"})).status_code == 200
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer file-key"})).status_code == 401
    for secret in ("sk-one", "sk-two", "sk-wrong", "rotated"):
        assert secret not in caplog.text


async def test_private_health_needs_the_key(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon(("http.api_keys", ["k"]), ("http.public_health", False))
    async with fake.client() as c:
        assert_error(await c.get("/health"), 401)
        assert_error(await c.get("/metrics"), 401)
        assert (await c.get("/health", headers={"Authorization": "Bearer k"})).status_code == 200


async def test_cors_off_by_default_and_on_when_configured(make_fake_daemon: Any) -> None:
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    off = await make_fake_daemon()
    async with off.client() as c:
        r = await c.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in (await c.get("/v1/models", headers={"Origin": "http://localhost:3000"})).headers
    on = await make_fake_daemon(("http.cors_origins", ["http://localhost:3000"]), ("http.api_keys", ["k"]))
    async with on.client() as c:
        r = await c.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 204, r.text
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "POST" in r.headers["access-control-allow-methods"] and "authorization" in r.headers["access-control-allow-headers"]
        r = await c.get("/v1/models", headers={"Origin": "http://localhost:3000", "Authorization": "Bearer k"})
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000" and "x-request-id" in r.headers["access-control-expose-headers"]
        r = await c.get("/v1/models", headers={"Origin": "http://evil.example", "Authorization": "Bearer k"})
        assert "access-control-allow-origin" not in r.headers


# -- health, metrics, openapi ------------------------------------------------------------------


async def test_health_follows_the_control_plane(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        r = await c.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["reasons"] == []
        fake.control.healthy = False
        r = await c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert r.json()["reasons"] == ["model chatty: engine died"]


async def test_disconnect_mid_stream_frees_the_slot(fake: FakeDaemon) -> None:
    slow = {**CHAT, "messages": [{"role": "user", "content": "SLOW"}], "stream": True}
    async with fake.client() as c:
        async with c.stream("POST", "/v1/chat/completions", json=slow) as r:
            assert r.status_code == 200
            seen = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                if seen >= 4:
                    break
            assert fake.control.running == 1
            assert fake.services.metrics.value("sage:num_requests_running", model_name="chatty") == 1
        # the response is closed: the server sees the disconnect and cancels the generation
        with trio.fail_after(5):
            while fake.control.running:
                await trio.sleep(0.02)
        text = (await c.get("/metrics")).text
    assert 'sage:num_requests_running{model_name="chatty"} 0.0' in text
    assert 'sage:request_success_total{finished_reason="cancelled",model_name="chatty"} 1.0' in text
    assert fake.services.lifecycle.in_flight == 0


async def test_openapi_document_is_generated_from_the_structs(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        doc = (await c.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/models/{model}", "/health", "/metrics"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]
    assert chat["properties"]["temperature"]["anyOf"][0] == {"type": "number", "minimum": 0.0, "maximum": 2.0}
    assert set(chat["required"]) == {"model", "messages"}

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
