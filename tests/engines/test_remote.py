"""RemoteOpenAIEngine against a real OpenAI-compatible child (SmolLM2 via llama.cpp, MiniLM), plus the
I/O-free SSE decoding."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest
import trio

from sage_daemon.core.ports import SagePorts
from sage_daemon.engines.base import (
    ChatMessage,
    EmbeddingEngine,
    EngineError,
    EngineState,
    GenerationChunk,
    GenerationRequest,
    LLMEngine,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)
from sage_client.sse import SSEDecoder
from sage_daemon.core.errors import UpstreamError
from sage_daemon.engines.remote import (
    OpenAIStreamAssembler,
    RemoteOpenAIEngine,
    RemoteServerError,
    RemoteSpec,
)
from tests.engines.conftest import ChildServer, minilm_path

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


# -- no I/O: SSE lines to chunks ------------------------------------------------------------------

def test_sse_decoder_follows_the_event_stream_rules() -> None:
    decoder = SSEDecoder()
    lines = [": keep-alive", "event: update", "data: {\"a\":", "data: 1}", "", "", "data:[DONE]"]
    events = [e for line in lines if (e := decoder.feed_line(line)) is not None]
    assert [(e.event, e.data) for e in events] == [("update", '{"a":\n1}')]
    last = decoder.close()  # no blank line after the last event
    assert last is not None and last.data == "[DONE]" and last.event == "message"


def test_assembler_holds_the_finish_until_usage() -> None:
    decoder, assembler = SSEDecoder(), OpenAIStreamAssembler()
    stream = [
        'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}', "",
        'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}', "",
        'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}', "",
        'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":3}}}', "",
        "data: [DONE]", "",
    ]
    chunks: list[GenerationChunk] = []
    for line in stream:
        if (event := decoder.feed_line(line)) is not None:
            chunks += assembler.feed(event)
    assert [c.text for c in chunks] == ["Hel", "lo", ""]
    assert chunks[-1].finish_reason == "stop"
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens, chunks[-1].cached_prompt_tokens) == (5, 2, 3)


def test_assembler_reads_logprobs_in_both_shapes() -> None:
    chat = OpenAIStreamAssembler(top_logprobs=1).feed(_event(
        '{"choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":{"content":[{"token":"Hi","logprob":-0.5,"bytes":[72,105],'
        '"top_logprobs":[{"token":"Hi","logprob":-0.5,"bytes":[72,105]},{"token":"Yo","logprob":-1.5,"bytes":[89,111]}]}]}}]}'
    ))
    assert chat == [GenerationChunk(text="Hi", logprobs=(TokenLogprob("Hi", (72, 105), -0.5, (TopLogprob("Hi", (72, 105), -0.5),)),))]
    legacy = OpenAIStreamAssembler(top_logprobs=2).feed(_event(
        '{"choices":[{"index":0,"text":"ab","logprobs":{"tokens":["a","b"],"token_logprobs":[-3.0,-0.1],'
        '"top_logprobs":[{"x":-0.2,"y":-0.9,"a":-3.0},{"b":-0.1}],"text_offset":[0,1]}}]}'
    ))
    entries = legacy[0].logprobs
    assert [(e.token, e.logprob) for e in entries] == [("a", -3.0), ("b", -0.1)]
    assert [t.token for t in entries[0].top] == ["x", "y"] and entries[1].top == (TopLogprob("b", (98,), -0.1),)
    assert OpenAIStreamAssembler().feed(_event('{"choices":[{"index":0,"text":"c","logprobs":null}]}')) == [GenerationChunk(text="c")]


def test_assembler_raises_typed_errors() -> None:
    assembler = OpenAIStreamAssembler()
    with pytest.raises(RemoteServerError) as info:
        assembler.feed(SSEDecoder().close() or _event('{"error":{"message":"engine died","type":"server_error","code":500}}'))
    # The remote's own status and words; to our client it is an engine failure (503, retry).
    assert info.value.remote_status == 500 and info.value.message == "engine died"
    assert isinstance(info.value, EngineError) and info.value.status == 503
    with pytest.raises(EngineError, match="without a finish_reason"):
        OpenAIStreamAssembler().finish()


def _event(data: str):  # noqa: ANN202
    decoder = SSEDecoder()
    decoder.feed_line(f"data: {data}")
    return decoder.feed_line("")


# -- against the real child ------------------------------------------------------------------------

def llm_spec(child: ChildServer, **changes: object) -> RemoteSpec:
    return RemoteSpec(name="remote-smol", kind="llm", base_url=child.url + "/v1", remote_model="smol", **changes)  # type: ignore[arg-type]


async def collect(engine: RemoteOpenAIEngine, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]


async def test_generate_streams_text_then_usage(openai_child: ChildServer) -> None:
    engine = RemoteOpenAIEngine(llm_spec(openai_child))
    await engine.load()
    try:
        assert isinstance(engine, LLMEngine)
        assert engine.health().state is EngineState.READY and engine.n_ctx == 512  # max_model_len from /v1/models
        chunks = await collect(engine, GenerationRequest("r1", GREEDY, prompt="Once upon a time"))
        texts = [c.text for c in chunks if c.text]
        assert len(texts) >= 3 and "".join(texts).strip()
        last = chunks[-1]
        assert last.finish_reason == "length" and last.completion_tokens == 12 and last.prompt_tokens > 0
        assert all(c.finish_reason is None for c in chunks[:-1])
        again = await collect(engine, GenerationRequest("r2", GREEDY, prompt="Once upon a time"))
        assert "".join(c.text for c in again) == "".join(texts)  # greedy: same text through the proxy
        stats = engine.stats()
        assert stats.requests_total == 2 and stats.generation_tokens_total == 24 and stats.slots_busy == 0
    finally:
        await engine.unload()


async def test_logit_bias_reaches_the_remote_server(openai_child: ChildServer, smollm2_vocab: Any) -> None:
    vocab = smollm2_vocab  # the child serves SmolLM2
    banana = vocab.tokenize(b" banana", add_bos=False)[-1]
    engine = RemoteOpenAIEngine(llm_spec(openai_child))
    await engine.load()
    try:
        forced_sampling = msgspec.structs.replace(GREEDY, max_tokens=3, logit_bias=((banana, 100.0),))
        forced = "".join(c.text for c in await collect(engine, GenerationRequest("b1", forced_sampling, prompt="Once upon a time")))
        assert forced == vocab.detokenize([banana] * 3).decode()
    finally:
        await engine.unload()


async def test_logprobs_come_through_a_remote_sage_daemon(live: Any) -> None:
    """The session's live daemon as the remote: real logprobs, in the chat and the legacy shape."""
    from tests.conftest import FRANCE, KEY

    engine = RemoteOpenAIEngine(RemoteSpec(name="via-sage", kind="llm", base_url=live.url + "/v1", remote_model="smollm2", api_key=KEY))
    await engine.load()
    try:
        sampling = msgspec.structs.replace(GREEDY, max_tokens=5, logprobs=2)
        chat = await collect(engine, GenerationRequest("lp-chat", sampling, messages=tuple(ChatMessage(m["role"], m["content"]) for m in FRANCE)))
        plain = await collect(engine, GenerationRequest("lp-text", sampling, prompt="The capital of France is"))
    finally:
        await engine.unload()
    for chunks in (chat, plain):
        entries = [e for c in chunks for e in c.logprobs]
        assert len(entries) == chunks[-1].completion_tokens == 5
        assert bytes(b for e in entries for b in e.bytes).decode() == "".join(c.text for c in chunks)
        assert all(len(e.top) == 2 and e.top[0].logprob >= e.top[1].logprob and e.logprob <= 0 for e in entries)
        assert all(e.top[0].token == e.token for e in entries)  # greedy: the sampled token is the likeliest


async def test_chat_streams_deltas(openai_child: ChildServer) -> None:
    engine = RemoteOpenAIEngine(llm_spec(openai_child))
    await engine.load()
    try:
        request = GenerationRequest("c1", SamplingParams(max_tokens=24, temperature=0.0),
                                    messages=(ChatMessage("user", "What is the capital of France?"),))
        chunks = await collect(engine, request)
        text = "".join(c.text for c in chunks)
        assert text.strip() and "<|im_" not in text  # an answer, without template markup
        assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].completion_tokens > 0
        assert chunks[-1].prompt_tokens > 30  # SmolLM2's template adds a system prompt around 8 tokens of question
    finally:
        await engine.unload()


@pytest.mark.slow  # importing torch for the reference model
async def test_embed_matches_the_model(openai_child: ChildServer) -> None:
    from sentence_transformers import SentenceTransformer

    engine = RemoteOpenAIEngine(RemoteSpec(name="emb", kind="embedding", base_url=openai_child.url, remote_model="minilm"))
    await engine.load()
    try:
        assert isinstance(engine, EmbeddingEngine) and engine.dimensions == 384
        texts = ["hello world", "a second sentence"]
        result = await engine.embed(texts)
        reference = SentenceTransformer(minilm_path(), device="cpu")
        np.testing.assert_allclose(np.array(result.vectors), reference.encode(texts, normalize_embeddings=True), atol=1e-5)
        assert result.prompt_tokens == sum(len(reference.tokenizer(t)["input_ids"]) for t in texts)
    finally:
        await engine.unload()


async def test_unreachable_remote_is_a_clear_engine_error() -> None:
    port = SagePorts.find_free_port()  # nothing listens there
    engine = RemoteOpenAIEngine(RemoteSpec(name="x", kind="llm", base_url=f"http://127.0.0.1:{port}", connect_timeout_s=2))
    with pytest.raises(EngineError, match=rf"remote http://127.0.0.1:{port} is not reachable: ConnectError"):
        await engine.load()
    health = engine.health()
    assert health.state is EngineState.ERROR and "not reachable" in health.detail
    with pytest.raises(EngineError, match="not ready"):
        await collect(engine, GenerationRequest("r", GREEDY, prompt="hi"))


async def test_unknown_remote_model_names_what_it_serves(openai_child: ChildServer) -> None:
    engine = RemoteOpenAIEngine(RemoteSpec(name="x", kind="llm", base_url=openai_child.url, remote_model="llama-70b"))
    with pytest.raises(EngineError, match=r"has no model llama-70b; it serves: minilm, smol"):
        await engine.load()


async def test_remote_4xx_is_passed_on_typed(openai_child: ChildServer) -> None:
    engine = RemoteOpenAIEngine(llm_spec(openai_child))
    await engine.load()
    try:
        engine.remote_model = "gone-since-load"  # the remote unloaded it: it answers 404 in OpenAI's shape
        with pytest.raises(UpstreamError) as info:
            await collect(engine, GenerationRequest("r", GREEDY, prompt="hi"))
        assert info.value.status == 404 and info.value.code == "model_not_found"
        assert "gone-since-load" in info.value.message and not isinstance(info.value, EngineError)
    finally:
        await engine.unload()


async def test_cancelling_the_consumer_closes_the_stream(openai_child: ChildServer) -> None:
    engine = RemoteOpenAIEngine(llm_spec(openai_child))
    await engine.load()
    before = openai_child.stream_stats()
    try:
        received: list[str] = []
        with trio.move_on_after(30) as scope:
            async for chunk in engine.generate(GenerationRequest("long", SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True), prompt="Count: 1, 2, 3,")):
                received.append(chunk.text)
                if len(received) == 2:
                    scope.cancel()  # what a disconnecting HTTP client does to its request task
        assert scope.cancelled_caught and len(received) == 2
        assert engine.stats().slots_busy == 0
        with trio.fail_after(20):
            while (stats := await trio.to_thread.run_sync(openai_child.stream_stats))["open"]:
                await trio.sleep(0.1)
        assert stats["closed_by_client"] == before["closed_by_client"] + 1
        assert stats["completed"] == before["completed"]
    finally:
        await engine.unload()


# -- against small real HTTP servers: a remote's refusals, and one that never answers ----------------

class ScriptedRemote:
    """A real HTTP server on loopback that serves model `m` and answers each POST path with the
    status and OpenAI-shaped error body given in `replies` (what a vLLM or OpenAI server sends),
    with raw stream pieces, or with what a function of the request body returns."""

    def __init__(self, replies: dict[str, Any]):
        import http.server
        import json
        import threading
        import time

        models = {"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 64}]}

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, models) if self.path == "/v1/models" else self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                reply = replies[self.path]
                if callable(reply):
                    reply = reply(body)
                if isinstance(reply, tuple):
                    self._send(*reply)
                    return
                # A stream: the pieces as separate writes, the body ending when the connection closes.
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for piece in reply:
                    self.wfile.write(piece)
                    self.wfile.flush()
                    time.sleep(0.01)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def openai_error(message: str, type_: str, code: Any, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


async def test_a_remotes_400_and_404_reach_the_caller_as_that_status_with_its_message() -> None:
    remote = ScriptedRemote({
        # vLLM's shape: the status itself in `code`
        "/v1/completions": (400, openai_error("This model's maximum context length is 64 tokens.", "BadRequestError", 400, "prompt")),
        # OpenAI's: a word in `code`
        "/v1/chat/completions": (404, openai_error("The model `m` does not exist or you do not have access to it.", "invalid_request_error", "model_not_found", "model")),
        "/v1/embeddings": (400, openai_error("'input' : input cannot be an empty string", "invalid_request_error", None, "input")),
    })
    llm = RemoteOpenAIEngine(RemoteSpec(name="r", kind="llm", base_url=remote.url, remote_model="m"))
    embedder = RemoteOpenAIEngine(RemoteSpec(name="e", kind="embedding", base_url=remote.url, remote_model="m"))
    try:
        await llm.load()
        assert llm.n_ctx == 64
        with pytest.raises(UpstreamError) as info:
            await collect(llm, GenerationRequest("r", GREEDY, prompt="hi"))
        error = info.value
        assert (error.status, error.message, error.param) == (400, "This model's maximum context length is 64 tokens.", "prompt")
        assert error.code == "invalid_request" and error.type == "invalid_request_error" and not isinstance(error, EngineError)

        with pytest.raises(UpstreamError) as info:
            await collect(llm, GenerationRequest("c", GREEDY, messages=(ChatMessage("user", "hi"),)))
        error = info.value
        assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
        assert error.message == "The model `m` does not exist or you do not have access to it."
        assert llm.stats().slots_busy == 0 and llm.health().state is EngineState.READY  # a refusal is no engine failure

        embedder.dimensions = 3  # skip the dimension probe at load: this remote embeds nothing
        await embedder.load()
        with pytest.raises(UpstreamError) as info:
            await embedder.embed([""])
        assert (info.value.status, info.value.param) == (400, "input") and "empty string" in info.value.message
    finally:
        await llm.unload()
        await embedder.unload()
        remote.close()


async def test_a_remotes_5xx_stays_an_engine_error() -> None:
    remote = ScriptedRemote({"/v1/completions": (500, openai_error("CUDA error: out of memory", "InternalServerError", 500))})
    engine = RemoteOpenAIEngine(RemoteSpec(name="r", kind="llm", base_url=remote.url, remote_model="m"))
    try:
        await engine.load()
        with pytest.raises(RemoteServerError) as info:
            await collect(engine, GenerationRequest("r", GREEDY, prompt="hi"))
        assert isinstance(info.value, EngineError) and info.value.status == 503 and info.value.remote_status == 500
        assert "out of memory" in str(info.value)
    finally:
        await engine.unload()
        remote.close()


async def test_prepare_checks_what_it_can_without_a_tokenizer() -> None:
    from sage_daemon.core.errors import ChatTemplateMissingError, ContextOverflowError

    remote = ScriptedRemote({})
    engine = RemoteOpenAIEngine(RemoteSpec(name="r", kind="llm", base_url=remote.url, remote_model="m", chat=False))
    try:
        with pytest.raises(EngineError, match="not ready"):
            engine.prepare(GenerationRequest("r", GREEDY, prompt="hi"))
        await engine.load()
        text = GenerationRequest("r", GREEDY, prompt="hi")
        assert engine.prepare(text) is text  # text goes on unchanged: the remote counts its tokens
        with pytest.raises(ContextOverflowError) as info:
            engine.prepare(GenerationRequest("t", GREEDY, prompt_tokens=tuple(range(60))))  # 60 + 12 > 64
        assert (info.value.prompt_tokens, info.value.max_tokens, info.value.n_ctx) == (60, 12, 64)
        with pytest.raises(ChatTemplateMissingError):
            engine.prepare(GenerationRequest("c", GREEDY, messages=(ChatMessage("user", "hi"),)))
    finally:
        await engine.unload()
        remote.close()


async def test_a_remote_that_accepts_and_never_answers_fails_its_load_in_seconds() -> None:
    import socket
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []  # accepted and never answered (nor closed) until the test ends
    stop = threading.Event()

    def accept_forever() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    assert RemoteSpec(name="x", kind="llm", base_url=url).load_timeout_s <= 10  # the default, far under the 300 s stream timeout
    engine = RemoteOpenAIEngine(RemoteSpec(name="x", kind="llm", base_url=url, load_timeout_s=1.5))
    try:
        started = time.monotonic()
        with pytest.raises(EngineError, match=r"accepted the connection but did not answer GET /v1/models within 1.5 s"):
            await engine.load()
        assert time.monotonic() - started < 5
        assert held  # the connection really was accepted
        health = engine.health()
        assert health.state is EngineState.ERROR and "did not answer" in health.detail
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


async def test_a_stream_split_anywhere_with_crlf_and_no_final_blank_line() -> None:
    """The remote engine's reading of a real HTTP stream through the shared SSE parser: events
    torn across writes (a CRLF between two of them), comments, and [DONE] without a blank line."""
    events = [
        ": keep-alive",
        'data: {"choices":[{"index":0,"text":"Hel","finish_reason":null}]}',
        "",
        'data: {"choices":[{"index":0,"text":"lo ","finish_reason":null}]}',
        "",
        'data: {"choices":[{"index":0,"text":"\u00e9t\u00e9","finish_reason":"length"}]}',
        "",
        'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}',
        "",
        "data: [DONE]",
    ]
    body = "\r\n".join(events).encode()
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]  # cuts through lines, CRLFs and the UTF-8 of é
    remote = ScriptedRemote({"/v1/completions": pieces})
    engine = RemoteOpenAIEngine(RemoteSpec(name="r", kind="llm", base_url=remote.url, remote_model="m"))
    try:
        await engine.load()
        chunks = await collect(engine, GenerationRequest("s", GREEDY, prompt="hi"))
    finally:
        await engine.unload()
        remote.close()
    assert [c.text for c in chunks] == ["Hel", "lo ", "été", ""]
    assert (chunks[-1].finish_reason, chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == ("length", 4, 3)
