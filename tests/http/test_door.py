"""The door under hostile and unlucky input (issue 22), over real HTTP against a real daemon with
the in-test control plane: every sampling field bounded with a 400 naming it, whole floats taken
as the integers JSON Schema says they are, /openapi.json agreeing with the server, an engine
that restarts answered with 503 + Retry-After (never a 500), bodies read for every method so a
keep-alive connection stays usable (raw sockets), 503 `shutting_down` during the drain, and
/version guarded like /health."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import jsonschema
import pytest
import trio

from tests.http.conftest import FakeDaemon
from tests.http.test_gateway import CHAT, assert_error

COMPLETION = {"model": "base", "prompt": "once"}


def say(text: str) -> dict[str, Any]:
    return {**CHAT, "messages": [{"role": "user", "content": text}]}


# -- bounds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "patch", "param"),
    [
        ("/v1/chat/completions", {"top_k": 2147483648}, "top_k"),  # the request that killed an engine (issue 22)
        ("/v1/chat/completions", {"top_k": 1_048_577}, "top_k"),
        ("/v1/chat/completions", {"top_k": -1}, "top_k"),
        ("/v1/chat/completions", {"seed": 2**63}, "seed"),
        ("/v1/chat/completions", {"seed": -(2**63) - 1}, "seed"),
        ("/v1/chat/completions", {"n": 17}, "n"),
        ("/v1/chat/completions", {"max_tokens": 1_048_577}, "max_tokens"),
        ("/v1/chat/completions", {"max_completion_tokens": 0}, "max_completion_tokens"),
        ("/v1/chat/completions", {"stop": "x" * 1025}, "stop"),
        ("/v1/chat/completions", {"stop": ["ok", "y" * 1025]}, "stop[1]"),
        ("/v1/chat/completions", {"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ("/v1/chat/completions", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ("/v1/chat/completions", {"metadata": {"k" * 65: "v"}}, "metadata"),
        ("/v1/chat/completions", {"metadata": {"k": "v" * 513}}, "metadata"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 6.5}, "top_logprobs"),
        ("/v1/chat/completions", {"min_p": 1.5}, "min_p"),
        ("/v1/completions", {"logprobs": 6.5}, "logprobs"),
        ("/v1/completions", {"logprobs": 21}, "logprobs"),
        ("/v1/completions", {"best_of": 2**40}, "best_of"),
        ("/v1/completions", {"prompt": [2**31]}, "prompt"),
    ],
)
async def test_every_sampling_field_is_bounded(fake: FakeDaemon, path: str, patch: dict[str, Any], param: str) -> None:
    base = CHAT if "chat" in path else COMPLETION
    async with fake.client() as c:
        error = assert_error(await c.post(path, json={**base, **patch}), 400, type="invalid_request_error")
    assert error["param"] is not None and error["param"].startswith(param), error
    assert not fake.control.seen, "nothing out of range reaches the control plane"


async def test_the_largest_values_in_range_are_taken(fake: FakeDaemon) -> None:
    body = {
        **CHAT, "top_k": 1_048_576, "seed": 2**63 - 1, "n": 2, "stop": ["a", "b", "c", "x" * 1024],
        "logit_bias": {str(i): 1 for i in range(300)}, "metadata": {f"k{i}": "v" for i in range(16)}, "logprobs": True, "top_logprobs": 20,
    }
    async with fake.client() as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    sampling = fake.control.seen[-1][2].sampling
    assert (sampling.top_k, sampling.seed, sampling.logprobs, len(sampling.logit_bias)) == (1_048_576, 2**63 - 1, 20, 300)


async def test_whole_floats_are_integers_as_json_schema_says(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        r = await c.post("/v1/completions", json={**COMPLETION, "logprobs": 6.0, "max_tokens": 3.0, "n": 1.0, "prompt": [1.0, 2]})
        assert r.status_code == 200, r.text
        request = fake.control.seen[-1][2]
        assert (request.sampling.logprobs, request.sampling.max_tokens, request.prompt_tokens) == (6, 3, (1, 2))
        assert type(request.sampling.logprobs) is int and type(request.sampling.max_tokens) is int
        r = await c.post("/v1/chat/completions", json={**CHAT, "top_k": 40.0, "temperature": 1})
        assert r.status_code == 200 and fake.control.seen[-1][2].sampling.top_k == 40


async def test_a_body_nested_thousands_deep_is_a_400(fake: FakeDaemon) -> None:
    deep = json.dumps({**CHAT, "tools": []}).replace('"tools": []', '"tools": ' + "[" * 5000 + "]" * 5000)
    async with fake.client() as c:
        assert_error(await c.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"}), 400, code="invalid_json")
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200


# -- /openapi.json agrees with the server -----------------------------------------------------


def request_schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


@pytest.mark.parametrize(
    ("path", "schema", "body"),
    [
        ("/v1/completions", "CompletionRequest", {**COMPLETION, "logprobs": 6.0}),
        ("/v1/completions", "CompletionRequest", {**COMPLETION, "logprobs": 6.5}),
        ("/v1/embeddings", "EmbeddingRequest", {"model": "emb", "input": ""}),
        ("/v1/embeddings", "EmbeddingRequest", {"model": "emb", "input": ["a", ""]}),
        ("/v1/embeddings", "EmbeddingRequest", {"model": "emb", "input": "a"}),
        ("/v1/chat/completions", "ChatCompletionRequest", {**CHAT, "top_k": 2147483648}),
        ("/v1/chat/completions", "ChatCompletionRequest", {**CHAT, "seed": 2**63}),
        ("/v1/chat/completions", "ChatCompletionRequest", {**CHAT, "stop": ["a"] * 5}),
        ("/v1/chat/completions", "ChatCompletionRequest", {**CHAT, "logit_bias": {str(i): 0 for i in range(301)}}),
        ("/v1/chat/completions", "ChatCompletionRequest", {**CHAT, "max_tokens": 2.0}),
    ],
)
async def test_openapi_schema_and_server_agree(fake: FakeDaemon, path: str, schema: str, body: dict[str, Any]) -> None:
    async with fake.client() as c:
        doc = (await c.get("/openapi.json")).json()
        r = await c.post(path, json=body)
    valid = jsonschema.Draft202012Validator(request_schema(doc, schema)).is_valid(body)
    assert r.status_code in (200, 400), r.text
    assert valid == (r.status_code == 200), f"schema says {'valid' if valid else 'invalid'}, server answered {r.status_code}: {r.text}"


async def test_openapi_marks_authorization_only_when_keys_are_set(make_fake_daemon: Any) -> None:
    def secured(doc: dict[str, Any]) -> set[str]:
        return {path for path, item in doc["paths"].items() for op in item.values() if op.get("security")}

    open_daemon = await make_fake_daemon()
    async with open_daemon.client() as c:
        doc = (await c.get("/openapi.json")).json()
    assert secured(doc) == set(), "no keys: no route needs one"
    assert "/version" in doc["paths"]
    keyed = await make_fake_daemon(("http.api_keys", ["k"]))
    async with keyed.client() as c:
        assert secured((await c.get("/openapi.json")).json()) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/models", "/v1/models/{model}"}
    private = await make_fake_daemon(("http.api_keys", ["k"]), ("http.public_health", False))
    async with private.client(headers={"Authorization": "Bearer k"}) as c:
        assert {"/health", "/metrics", "/version"} <= secured((await c.get("/openapi.json")).json())


# -- /version ---------------------------------------------------------------------------------


async def test_version_follows_public_health_and_names_no_python(make_fake_daemon: Any) -> None:
    public = await make_fake_daemon(("http.api_keys", ["k"]))
    async with public.client() as c:
        r = await c.get("/version")
    assert r.status_code == 200 and set(r.json()) == {"version"}
    private = await make_fake_daemon(("http.api_keys", ["k"]), ("http.public_health", False))
    async with private.client() as c:
        assert_error(await c.get("/version"), 401, code="missing_api_key")
        assert_error(await c.get("/openapi.json"), 401)
        assert (await c.get("/version", headers={"Authorization": "Bearer k"})).json().keys() == {"version"}


# -- an engine that restarts --------------------------------------------------------------------


async def test_an_engine_restarting_is_a_503_with_retry_after_never_a_500(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        for body in (say("RESTARTING"), {**say("RESTARTING"), "stream": True}, {**say("RESTARTING"), "n": 2}):
            r = await c.post("/v1/chat/completions", json=body)
            error = assert_error(r, 503, code="engine_unavailable", type="server_error", param=None)
            assert r.headers["retry-after"] == "1" and "restarting" in error["message"]
        r = await c.post("/v1/completions", json={**COMPLETION, "prompt": "RESTARTING"})
        assert_error(r, 503, code="engine_unavailable")
        r = await c.post("/v1/embeddings", json={"model": "emb", "input": "RESTARTING"})
        assert_error(r, 503, code="engine_unavailable")
        assert r.headers["retry-after"] == "1"
        # An engine that reports its failure in a chunk instead of raising: the same answer.
        r = await c.post("/v1/chat/completions", json=say("ERROR_CHUNK"))
        error = assert_error(r, 503, code="engine_unavailable")
        assert r.headers["retry-after"] == "1" and "decode failed" in error["message"]
        r = await c.post("/v1/chat/completions", json={**say("ERROR_CHUNK"), "stream": True})
        assert r.status_code == 200 and '"code":"engine_unavailable"' in r.text.replace(" ", "") and r.text.endswith("data: [DONE]\n\n")
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert fake.services.lifecycle.in_flight == 0


async def test_a_bug_in_embeddings_is_a_500_not_a_hang(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        assert_error(await c.post("/v1/embeddings", json={"model": "emb", "input": "BUG"}), 500, code="internal_error")


# -- bodies and keep-alive connections ------------------------------------------------------------


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read off a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection; got {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-body"
        rest += chunk
    assert len(rest) == length, "nothing may follow the response: one request, one answer"
    return int(lines[0].split()[1]), headers, rest


def exchange(port: int, first: bytes, *, body_after_s: float = 0.0) -> list[tuple[int, dict[str, str], bytes]]:
    """`first` on a new connection, then GET /v1/models on the same one; both answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head, _, body = first.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        if body_after_s:
            sock.settimeout(body_after_s)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # no answer before the body
            sock.settimeout(5)
        sock.sendall(body)
        answers = [read_response(sock)]
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: test\r\n\r\n")
        answers.append(read_response(sock))
    return answers


@pytest.mark.parametrize(
    "first",
    [
        b"GET /v1/models HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\n\r\nhello world",
        b"GET /health HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        b"PUT /v1/models HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nabcde",  # 405
        b"DELETE /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc",  # 405
        b"GET /nothing HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n\r\nabcd",  # 404
        b"GET /v1/models HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
)
async def test_a_body_on_any_method_is_read_and_the_connection_serves_the_next_request(fake: FakeDaemon, first: bytes) -> None:
    # The body comes 0.3 s after the head, as a keep-alive client's often does: answered before
    # it came, the connection was closed under the client (6 of 10 follow-ups got nothing).
    port = int(fake.url.rsplit(":", 1)[1])
    (status, _, body), (status2, _, body2) = await trio.to_thread.run_sync(lambda: exchange(port, first, body_after_s=0.3))
    assert status in (200, 404, 405), body
    if status != 200:
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert status2 == 200 and json.loads(body2)["object"] == "list"


async def test_an_error_waits_for_the_body_of_a_get(make_fake_daemon: Any) -> None:
    # A 401 is known from the headers alone; answered before the body came, the connection
    # would be closed by hypercorn under the client. The body is read first, whatever the method.
    fake = await make_fake_daemon(("http.api_keys", ["k"]))
    port = int(fake.url.rsplit(":", 1)[1])
    first = b"GET /v1/models HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer wrong\r\nContent-Length: 4\r\n\r\nbody"

    def run() -> list[tuple[int, dict[str, str], bytes]]:
        return exchange(port, first, body_after_s=0.3)

    (status, _, _), (status2, _, _) = await trio.to_thread.run_sync(run)
    assert (status, status2) == (401, 401)


# -- the drain ----------------------------------------------------------------------------------


async def test_during_the_drain_a_request_on_an_open_connection_gets_a_503_shutting_down(fake: FakeDaemon) -> None:
    async with fake.client() as c:  # one keep-alive connection, opened before the drain
        assert (await c.get("/v1/models")).status_code == 200
        fake.services.lifecycle.state = "draining"
        try:
            for method, path, body in (("POST", "/v1/chat/completions", CHAT), ("GET", "/v1/models", None), ("POST", "/v1/embeddings", {"model": "emb", "input": "x"})):
                r = await c.request(method, path, json=body)
                assert_error(r, 503, code="shutting_down", type="server_error")
                assert int(r.headers["retry-after"]) >= 1
            r = await c.get("/health")  # monitoring still sees why
            assert r.status_code == 503 and r.json()["reasons"] == ["daemon is draining"]
        finally:
            fake.services.lifecycle.state = "serving"
    assert not fake.control.seen


async def test_the_fake_plane_comes_in_through_the_daemons_seam(fake: FakeDaemon) -> None:
    assert fake.instance.control is fake.control is fake.services.control
    async with httpx.AsyncClient(base_url=fake.url) as c:
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_after_sigterm_a_request_on_a_connection_opened_before_gets_a_503(make_fake_daemon: Any) -> None:
    # The whole path: the daemon's own signal handling starts the drain while a stream holds it
    # open; a client's keep-alive connection from before the drain gets an answer, not a hang.
    import os
    import signal

    fake = await make_fake_daemon(("daemon.drain_grace_s", 20))
    slow = {**say("SLOW"), "stream": True}
    async with fake.client() as streamer, fake.client() as other:
        assert (await other.get("/v1/models")).status_code == 200
        async with streamer.stream("POST", "/v1/chat/completions", json=slow) as r:
            lines = r.aiter_lines()
            assert (await lines.__anext__()).startswith("data: ")
            os.kill(os.getpid(), signal.SIGTERM)  # the daemon's signal receiver takes it
            with trio.fail_after(5):
                while fake.services.lifecycle.state != "draining":
                    await trio.sleep(0.01)
            with trio.fail_after(5):
                late = await other.get("/v1/models")
            assert_error(late, 503, code="shutting_down")
            assert int(late.headers["retry-after"]) >= 1
            assert fake.services.lifecycle.in_flight == 1, "the stream still runs: the drain waits for it"
    with trio.fail_after(10):
        while fake.services.lifecycle.in_flight:
            await trio.sleep(0.02)
