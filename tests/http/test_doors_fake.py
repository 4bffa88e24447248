"""The Responses and Messages doors in process, over the in-test control plane (real door, real
SQLite store): stored responses are private to their API key, `x-api-key` is a key like a
bearer token, model aliases, and errors in each API's shape."""

from __future__ import annotations

from typing import Any

import pytest

CHAT = {"model": "chatty", "input": "Say hello", "max_output_tokens": 5}


async def test_a_stored_response_is_visible_only_to_its_key(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon(("http.api_keys", ["key-one", "key-two"]))
    one, two = ({"Authorization": f"Bearer {k}"} for k in ("key-one", "key-two"))
    async with fake.client() as c:
        created = (await c.post("/v1/responses", json=CHAT, headers=one)).json()
        assert created["object"] == "response" and created["output"][0]["content"][0]["text"]
        rid = created["id"]
        assert (await c.get(f"/v1/responses/{rid}", headers=one)).json()["id"] == rid
        for attempt in (c.get(f"/v1/responses/{rid}", headers=two), c.delete(f"/v1/responses/{rid}", headers=two),
                        c.post("/v1/responses", json={**CHAT, "previous_response_id": rid}, headers=two)):
            reply = await attempt
            assert reply.status_code == 404 and reply.json()["error"]["param"] == "response_id"
        follow = await c.post("/v1/responses", json={**CHAT, "previous_response_id": rid}, headers=one)
        assert follow.status_code == 200
        # The fake echoes the prompt's words into its token count: the first turn is in the second prompt.
        assert follow.json()["usage"]["input_tokens"] > created["usage"]["input_tokens"]
        assert (await c.post("/v1/responses", json={**CHAT, "store": False}, headers=one)).status_code == 200
        deleted = await c.delete(f"/v1/responses/{rid}", headers=one)
        assert deleted.json() == {"id": rid, "object": "response", "deleted": True}
        assert (await c.get(f"/v1/responses/{rid}", headers=one)).status_code == 404


async def test_messages_with_x_api_key_aliases_and_anthropic_errors(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon(("http.api_keys", ["k"]), ("http.model_aliases", {"claude-*": "chatty", "gpt-local": "chatty"}))
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 5, "messages": [{"role": "user", "content": "Say hello"}]}
    async with fake.client() as c:
        ok = await c.post("/v1/messages", json=body, headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
        assert ok.status_code == 200 and ok.json()["type"] == "message" and ok.json()["model"] == "claude-3-5-haiku-latest"
        assert fake.control.seen[-1][0] == "chatty"
        denied = await c.post("/v1/messages", json=body, headers={"x-api-key": "nope"})
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
        unknown = await c.post("/v1/messages", json={**body, "model": "other"}, headers={"x-api-key": "k"})
        assert unknown.status_code == 404 and unknown.json() == {"type": "error", "error": {"type": "not_found_error", "message": unknown.json()["error"]["message"]}}
        full = await c.post("/v1/messages", json={**body, "messages": [{"role": "user", "content": "QUEUE_FULL"}]}, headers={"x-api-key": "k"})
        assert full.status_code == 429 and full.json()["error"]["type"] == "rate_limit_error" and full.headers["retry-after"]
        bad = await c.post("/v1/messages", json={**body, "max_tokens": 0}, headers={"x-api-key": "k"})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        counted = await c.post("/v1/messages/count_tokens", json={"model": "claude-x", "messages": body["messages"]}, headers={"x-api-key": "k"})
        assert counted.status_code == 200 and counted.json() == {"input_tokens": 2}
        aliased = await c.post("/v1/responses", json={**CHAT, "model": "gpt-local"}, headers={"Authorization": "Bearer k"})
        assert aliased.status_code == 200
        # OpenAI's shape everywhere else.
        assert (await c.post("/v1/responses", json={"model": "chatty"}, headers={"x-api-key": "k"})).json()["error"]["param"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
async def test_streams_end_with_their_apis_last_event(fake: Any, path: str) -> None:
    body = ({"model": "chatty", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": True}
            if path == "/v1/messages" else {**CHAT, "stream": True})
    async with fake.client() as c:
        reply = await c.post(path, json=body)
    events = [line.removeprefix("event: ") for line in reply.text.splitlines() if line.startswith("event: ")]
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    assert events[-1] in (("message_stop",) if path == "/v1/messages" else ("response.completed", "response.incomplete")), events
