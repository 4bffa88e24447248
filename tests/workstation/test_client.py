"""UnifiedInferenceClient against a real OpenAI-compatible server (tests/engines/openai_child.py:
SmolLM2 through llama.cpp and MiniLM), against a real daemon that stops, and against a real
HTTP server that answers 429 with Retry-After."""

from __future__ import annotations

import http.server
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sage_client.client import (
    AsyncUnifiedInferenceClient,
    ChatMessage,
    ConnectionFailedError,
    DaemonNotRunningError,
    ModelNotFoundError,
    OverloadedError,
    AuthenticationError,
    UnifiedInferenceClient,
    error_from_response,
    retry_after_seconds,
)
from tests.conftest import DaemonProcess
from tests.engines.conftest import ChildServer, minilm_path

GREEDY = {"temperature": 0.0, "seed": 0}


@pytest.fixture(scope="module")
def server() -> Iterator[ChildServer]:
    child = ChildServer("--embedding-model", minilm_path())
    yield child
    child.stop()


@pytest.fixture
def client(server: ChildServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[UnifiedInferenceClient]:
    monkeypatch.setenv("SAGE_BASE_URL", server.url)  # no /v1: the client adds it
    monkeypatch.delenv("SAGE_API_KEY", raising=False)
    with UnifiedInferenceClient.create(model="smol", embedding_model="minilm") as c:
        yield c


@pytest.mark.slow
def test_chat_stream_and_chat_agree_and_carry_usage(client: UnifiedInferenceClient) -> None:
    messages = [ChatMessage("system", "You are terse."), {"role": "user", "content": "Name a colour."}]
    deltas = list(client.chat_stream(messages, max_tokens=8, **GREEDY))
    last = deltas[-1]
    assert last.text == "" and last.finish_reason in ("stop", "length")
    # A stop token counts as a completion token but carries no text.
    assert last.usage is not None and len(deltas) - 1 <= last.usage.completion_tokens <= 8 and last.usage.prompt_tokens > 5
    streamed = "".join(d.text for d in deltas)
    whole = client.chat(messages, max_tokens=8, **GREEDY)
    assert streamed.strip() and whole.text == streamed
    assert whole.model == "smol" and whole.id == "chatcmpl-test" and whole.usage == last.usage


@pytest.mark.slow
def test_generate_stops_at_max_tokens(client: UnifiedInferenceClient) -> None:
    result = client.generate("The capital of France is", max_tokens=5, **GREEDY)
    assert result.finish_reason == "length" and result.usage is not None and result.usage.completion_tokens == 5
    assert result.text == "".join(d.text for d in client.generate_stream("The capital of France is", max_tokens=5, **GREEDY) if d.text)


@pytest.mark.slow
def test_embed_models_and_unknown_model(client: UnifiedInferenceClient) -> None:
    result = client.embed(["a cat sat on the mat", "a kitten sat on a rug", "quarterly tax filing"])
    assert result.model == "minilm" and [len(v) for v in result.vectors] == [384, 384, 384]
    cos = [sum(a * b for a, b in zip(result.vectors[0], v)) for v in result.vectors[1:]]
    assert math.isclose(sum(x * x for x in result.vectors[0]), 1.0, rel_tol=1e-3) and cos[0] > cos[1]
    assert client.embed("one").vectors[0] == pytest.approx(client.embed(["one"]).vectors[0])
    ids = {m.id for m in client.models()}
    assert ids == {"smol", "minilm"}
    with pytest.raises(ModelNotFoundError, match="does not exist.*client.models"):
        client.chat("hi", model="no-such-model")
    with pytest.raises(ModelNotFoundError):
        client.embed("hi", model="no-such-model")


@pytest.mark.slow
async def test_async_twin(server: ChildServer) -> None:
    async with await AsyncUnifiedInferenceClient.acreate(base_url=server.url + "/v1", model="smol", embedding_model="minilm") as client:
        pieces = [d async for d in client.chat_stream("Say hi", max_tokens=4, **GREEDY)]
        assert pieces[-1].finish_reason in ("stop", "length") and pieces[-1].usage is not None
        whole = await client.chat("Say hi", max_tokens=4, **GREEDY)
        assert whole.text == "".join(p.text for p in pieces)
        generated = await client.generate("Once upon a time", max_tokens=3, **GREEDY)
        assert generated.usage is not None and generated.usage.completion_tokens == 3
        assert len((await client.embed("hello")).vectors[0]) == 384
        assert {m.id for m in await client.models()} == {"smol", "minilm"}
        with pytest.raises(ModelNotFoundError):
            await client.generate("x", model="nope")


def test_no_daemon_says_how_to_start_it(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_SOCKET", str(clean_env / "nothing-here.sock"))
    with pytest.raises(DaemonNotRunningError) as info:
        UnifiedInferenceClient.create()
    assert "the daemon is not running" in str(info.value) and "start it with `sage-daemon`" in str(info.value)
    assert "systemctl --user start sage" in str(info.value) and "SAGE_BASE_URL" in str(info.value)


@pytest.mark.slow
def test_daemon_found_through_its_socket_then_stopped(spawn_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon: DaemonProcess = spawn_daemon()
    monkeypatch.setenv("SAGE_SOCKET", str(daemon.socket))
    with UnifiedInferenceClient.create(model="smollm2") as client:
        assert client.endpoint.local and client.endpoint.source == str(daemon.socket)
        assert client.endpoint.base_url.startswith("http://127.0.0.1:") and client.endpoint.base_url.endswith("/v1")
        daemon.stop()
        with pytest.raises(DaemonNotRunningError, match="does not answer.*start it with `sage-daemon`"):
            client.chat("hi")


def test_unreachable_remote_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGE_BASE_URL", "http://127.0.0.1:9/v1")  # discard port: nothing listens
    with UnifiedInferenceClient.create(model="m") as client, pytest.raises(ConnectionFailedError, match="cannot reach http://127.0.0.1:9/v1"):
        client.models()


class _Busy(http.server.BaseHTTPRequestHandler):
    """A real server whose queue is always full, and which wants a key for /v1/models."""

    def do_POST(self) -> None:  # noqa: N802
        body = b'{"error":{"message":"the queue for smol is full","type":"rate_limit_error","param":null,"code":"queue_full"}}'
        self.send_response(429)
        self.send_header("Retry-After", "3")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        body = b'{"error":{"message":"Incorrect API key provided.","type":"authentication_error","param":null,"code":"invalid_api_key"}}'
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_overloaded_carries_the_retry_delay_and_auth_says_what_to_set() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with UnifiedInferenceClient.create(base_url=f"http://127.0.0.1:{httpd.server_address[1]}", model="smol", api_key="wrong") as client:
            with pytest.raises(OverloadedError) as info:
                client.chat("hi")
            assert info.value.retry_after_s == 3.0 and info.value.status == 429 and info.value.code == "queue_full"
            assert "retry in 3 s" in str(info.value)
            with pytest.raises(AuthenticationError, match="SAGE_API_KEY"):
                client.models()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_retry_after_as_an_http_date_and_odd_error_bodies() -> None:
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon") is None
    error = error_from_response(502, b"<html>bad gateway</html>")
    assert error.status == 502 and "bad gateway" in error.message
