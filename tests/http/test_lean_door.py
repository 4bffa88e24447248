"""The lean ASGI path of the hot routes (http/lean.py): the same answers as the Quart app gives,
a slow reader gets every token once and in order, and a client that goes away while a write is
blocked frees its generation."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import trio

from sage_daemon.engines.base import GenerationChunk
from tests.http.conftest import FakeDaemon

CHAT = {"model": "chatty", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "chatty", "prompt": "hi", "max_tokens": 8}


def _via_quart(body: dict[str, Any]) -> dict[str, Any]:
    """The same request with a chunked body (no Content-Length): the lean path hands it to Quart."""
    raw = json.dumps(body).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield raw

    return {"content": chunks()}


def _comparable(r: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in r.headers.items() if k not in ("date", "content-length", "transfer-encoding")}
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]" for line in r.text.split("\n") if line.startswith("data: ")]
        for e in events:
            if isinstance(e, dict):
                e.pop("created", None)
        return r.status_code, headers, events
    body = r.json()
    if isinstance(body, dict):
        body.pop("created", None)
    return r.status_code, headers, body


async def _both(c: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[Any, Any]:
    headers = {"X-Request-Id": "same-id", **(headers or {})}
    lean = await c.post(path, json=body, headers=headers)
    quart = await c.post(path, headers={**headers, "Content-Type": "application/json"}, **_via_quart(body))
    return _comparable(lean), _comparable(quart)


async def test_lean_and_quart_answer_alike(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon(("http.api_keys", ["k"]))
    auth = {"Authorization": "Bearer k"}
    cases: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("/v1/chat/completions", CHAT, auth),
        ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}, auth),
        ("/v1/chat/completions", {**CHAT, "n": 2}, auth),
        ("/v1/completions", COMPLETION, auth),
        ("/v1/completions", {**COMPLETION, "stream": True}, auth),
        ("/v1/embeddings", {"model": "emb", "input": ["a b", "c"]}, auth),
        ("/v1/embeddings", {"model": "emb", "input": "a b", "encoding_format": "base64"}, auth),
        ("/v1/chat/completions", CHAT, {}),  # 401 missing key
        ("/v1/chat/completions", CHAT, {"Authorization": "Bearer wrong"}),  # 401 wrong key
        ("/v1/chat/completions", {"model": "chatty"}, auth),  # 400: messages missing
        ("/v1/chat/completions", {**CHAT, "max_tokens": 6.0}, auth),  # a whole float is an integer
        ("/v1/chat/completions", {**CHAT, "max_tokens": 6.5}, auth),  # 400
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "QUEUE_FULL"}]}, auth),  # 429 + Retry-After
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "RESTARTING"}], "stream": True}, auth),  # 503
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "FAIL_MIDSTREAM"}], "stream": True}, auth),  # error event
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "BUG"}]}, auth),  # 500
        ("/v1/chat/completions", {**CHAT, "model": "nope"}, auth),  # 404 model
        ("/v1/embeddings", {"model": "chatty", "input": "x"}, auth),  # 400: not an embedding model
        ("/v1/embeddings", {"model": "emb", "input": "RESTARTING"}, auth),
        ("/v1/completions", COMPLETION, {**auth, "X-SAGE-Deadline-Ms": "-1"}),  # 400 header
    ]
    async with fake.client() as c:
        for path, body, headers in cases:
            lean, quart = await _both(c, path, body, headers)
            assert lean == quart, (path, body, headers)
        # not JSON: the lean path leaves it to Quart (415), whatever the route
        r = await c.post("/v1/embeddings", content=b"x", headers={**auth, "Content-Type": "text/plain"})
        assert r.status_code == 415
        r = await c.post("/v1/chat/completions", content=b"{", headers={**auth, "Content-Type": "application/json", "X-Request-Id": "bad id!"})
        assert r.status_code == 400 and r.headers["x-request-id"].startswith("req-")
    assert fake.services.lifecycle.in_flight == 0


async def test_the_drain_answers_503_on_the_lean_path(fake: FakeDaemon) -> None:
    async with fake.client() as c:
        fake.services.lifecycle.state = "draining"
        try:
            lean, quart = await _both(c, "/v1/chat/completions", CHAT)
        finally:
            fake.services.lifecycle.state = "serving"
    assert lean == quart and lean[0] == 503 and lean[2]["error"]["code"] == "shutting_down"


def _numbered(fake: FakeDaemon, count: int, size: int, closed: list[bool]) -> None:
    """Make the fake plane stream `count` numbered tokens of `size` characters as fast as it can."""

    async def generate(model: str, kind: Any, request: Any, meta: Any) -> AsyncIterator[GenerationChunk]:
        async def stream() -> AsyncIterator[GenerationChunk]:
            try:
                for i in range(count):
                    await trio.lowlevel.checkpoint()
                    yield GenerationChunk(text=f"<{i}>".ljust(size, "."), token_ids=(i,))
                yield GenerationChunk(finish_reason="stop", prompt_tokens=1, completion_tokens=count)
            finally:
                closed.append(True)

        return stream()

    fake.control.generate = generate  # type: ignore[method-assign]


def _raw_post(port: int, body: dict[str, Any]) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's writes block soon
    sock.connect(("127.0.0.1", port))
    raw = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(raw) + raw)
    return sock


async def test_a_slow_reader_gets_every_token_once_in_order_and_done(fake: FakeDaemon) -> None:
    closed: list[bool] = []
    count = 400
    _numbered(fake, count, 200, closed)
    port = int(fake.url.rsplit(":", 1)[1])
    sock = _raw_post(port, {**COMPLETION, "stream": True, "max_tokens": count})
    await trio.sleep(0.5)  # the client lags: the server's writes wait for it
    received = b""

    def read_all() -> bytes:
        out = b""
        sock.settimeout(10)
        while not out.endswith(b"0\r\n\r\n"):
            data = sock.recv(1024)  # slowly, in small pieces
            if not data:
                break
            out += data
        return out

    try:
        received = await trio.to_thread.run_sync(read_all)
    finally:
        sock.close()
    head, _, chunked = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    body = b""
    while chunked:
        size_line, _, rest = chunked.partition(b"\r\n")
        size = int(size_line, 16)
        body += rest[:size]
        chunked = rest[size + 2 :]
        if size == 0:
            break
    texts = []
    events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for e in events[:-1]:
        for choice in json.loads(e)["choices"]:
            texts.append(choice["text"])
    joined = "".join(texts)
    tokens = [piece.split(">")[0] for piece in joined.split("<")[1:]]
    assert tokens == [str(i) for i in range(count)]  # every token once, in order
    assert closed == [True] and fake.services.lifecycle.in_flight == 0


async def test_a_client_that_goes_away_mid_write_frees_the_generation(fake: FakeDaemon) -> None:
    closed: list[bool] = []
    _numbered(fake, 100_000, 1000, closed)  # far more than the socket buffers hold
    port = int(fake.url.rsplit(":", 1)[1])
    sock = _raw_post(port, {**COMPLETION, "stream": True, "max_tokens": 100_000})
    await trio.sleep(0.5)  # the server's write is blocked on the full window now
    sock.close()  # with unread data: a reset
    with trio.fail_after(5):
        while not closed or fake.services.lifecycle.in_flight:
            await trio.sleep(0.02)
    del fake.control.generate  # the fake's own again
    async with fake.client() as c:  # the door is fine afterwards
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
