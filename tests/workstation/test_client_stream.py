"""UnifiedInferenceClient reading real HTTP streams through the shared SSE parser (sage_client.sse):
a server on loopback writes an OpenAI chat stream in small pieces, as a proxy or a slow network
delivers it."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from sage_client.client import AsyncUnifiedInferenceClient, BadRequestError, UnifiedInferenceClient

EVENTS = [
    ": keep-alive",
    'data: {"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
    "",
    "event: message",
    'data: {"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"content":"Gr\\u00fc"}}]}',
    "",
    'data: {"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"content":"\\u00dfe"},"finish_reason":"stop"}]}',
    "",
    'data: {"id":"chatcmpl-1","model":"m","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}',
    "",
    "data: [DONE]",  # no blank line after the last event
]


class PieceServer:
    """Answers every POST with `body` written `size` bytes at a time (close-delimited)."""

    def __init__(self, body: bytes, size: int):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i in range(0, len(body), size):
                    self.wfile.write(body[i : i + size])
                    self.wfile.flush()
                    time.sleep(0.002)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=[("\n", 5), ("\r\n", 3), ("\r\n", 1000), ("\r", 4)], ids=["lf-5", "crlf-3", "crlf-whole", "cr-4"])
def server(request: pytest.FixtureRequest) -> Iterator[PieceServer]:
    newline, size = request.param
    piece_server = PieceServer(newline.join(EVENTS).encode(), size)
    yield piece_server
    piece_server.close()


def test_chat_stream_and_chat_read_a_stream_torn_into_pieces(server: PieceServer) -> None:
    with UnifiedInferenceClient.create(base_url=server.url, model="m") as client:
        deltas = list(client.chat_stream("hi"))
        whole = client.chat("hi")
    assert [d.text for d in deltas] == ["Grü", "ße", ""]
    last = deltas[-1]
    assert last.finish_reason == "stop" and last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (9, 2)
    assert (whole.id, whole.model, whole.text, whole.finish_reason, whole.usage) == ("chatcmpl-1", "m", "Grüße", "stop", last.usage)


async def test_the_async_twin_reads_it_the_same(server: PieceServer) -> None:
    async with await AsyncUnifiedInferenceClient.acreate(base_url=server.url, model="m") as client:
        deltas = [d async for d in client.chat_stream("hi")]
    assert "".join(d.text for d in deltas) == "Grüße" and deltas[-1].finish_reason == "stop"


def test_an_error_event_mid_stream_is_raised_typed() -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\ndata: {"error":{"message":"bad stop","type":"invalid_request_error","code":400,"param":"stop"}}\n\n'
    piece_server = PieceServer(body, 11)
    try:
        with UnifiedInferenceClient.create(base_url=piece_server.url, model="m") as client:
            with pytest.raises(BadRequestError, match="bad stop") as info:
                list(client.chat_stream("hi"))
        assert info.value.status == 400 and info.value.param == "stop"
    finally:
        piece_server.close()
