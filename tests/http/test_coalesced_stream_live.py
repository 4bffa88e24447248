"""Coalesced SSE against the live daemon (SmolLM2 on llama.cpp): a reader slower than the engine
gets the tokens that were decoded while its writes waited merged into fewer events, every token
once and in order, then `[DONE]`; a client that goes away while such a write is blocked frees its
engine slot (issue 23)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import KEY, LiveDaemon, metric

TOKENS = 160
BODY = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True}, "logprobs": 1}


def _post(live: LiveDaemon, body: dict[str, Any], rcvbuf: int | None = None) -> socket.socket:
    url = urlsplit(live.url)
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # a small window: the daemon's writes block soon
    sock.connect((url.hostname, url.port))
    raw = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % (KEY.encode(), len(raw)) + raw)
    return sock


def _read_stream(sock: socket.socket, piece: int, pause_s: float) -> list[str]:
    """The SSE data lines of one chunked reply, read `piece` bytes at a time with a pause between."""
    sock.settimeout(60)
    received = b""
    while not received.endswith(b"0\r\n\r\n"):
        data = sock.recv(piece)
        assert data, f"the daemon closed the connection early: {received[-300:]!r}"
        received += data
        if pause_s:
            time.sleep(pause_s)
    head, _, chunked = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    body = b""
    while chunked:
        size_line, _, rest = chunked.partition(b"\r\n")
        size = int(size_line, 16)
        body += rest[:size]
        chunked = rest[size + 2 :]
        if size == 0:
            break
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


def _texts(events: list[str]) -> list[str]:
    """Each event's text, checked against the tokens its logprobs list (each token once, in order),
    and the stream's shape: finish_reason, the usage chunk, one [DONE] at the end."""
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    parsed = [json.loads(e) for e in events[:-1]]
    assert parsed[-1]["choices"] == [] and parsed[-1]["usage"]["completion_tokens"] == TOKENS  # the usage chunk
    choices = [c for p in parsed[:-1] for c in p["choices"]]
    assert choices[-1]["finish_reason"] == "length" and all(c["finish_reason"] is None for c in choices[:-1])
    tokens = [t for c in choices for t in c["logprobs"]["tokens"]]
    assert len(tokens) == TOKENS
    for c in choices:
        assert c["text"] == "".join(c["logprobs"]["tokens"])
    return [c["text"] for c in choices]


def test_a_slow_reader_gets_every_token_once_in_order_in_fewer_events(live: LiveDaemon) -> None:
    fast = _post(live, BODY)
    try:
        fast_texts = _texts(_read_stream(fast, 65536, 0))
    finally:
        fast.close()
    slow = _post(live, BODY, rcvbuf=4096)
    try:
        time.sleep(1.0)  # the reader lags from the start; then reads slowly
        slow_texts = _texts(_read_stream(slow, 512, 0.01))
    finally:
        slow.close()
    assert len(fast_texts) >= TOKENS * 0.9  # keeping up: about one event per token
    assert len(slow_texts) < len(fast_texts) * 0.75, (len(slow_texts), len(fast_texts))  # merged while its writes waited
    assert max(len(t) for t in slow_texts) > max(len(t) for t in fast_texts)


def test_a_client_gone_mid_coalesced_write_frees_its_slot(live: LiveDaemon) -> None:
    sock = _post(live, {**BODY, "max_tokens": 2000}, rcvbuf=4096)
    time.sleep(1.5)  # the daemon's writes are blocked on the full window; tokens merge meanwhile
    sock.close()  # with unread data: a reset
    deadline = time.monotonic() + 10
    with live.http() as http:
        while True:
            running = metric(http.get("/metrics").text, "sage:num_requests_running", model_name="smollm2")
            if running == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert running == 0  # the generation ended with the connection, not after 2,000 tokens
        r = http.post("/v1/completions", json={"model": "smollm2", "prompt": "Hello", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
