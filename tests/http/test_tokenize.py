"""POST /tokenize and /detokenize against the live daemon: llama-server's shape (content,
add_special, with_pieces) and vLLM's (prompt, add_special_tokens), on the llama.cpp chat model
and the sentence-transformers embedding model; round trips of ASCII, CJK and emoji; ids outside
the vocabulary, unknown models and missing keys refused."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveDaemon

pytestmark = pytest.mark.slow

TEXTS = ["Hello, world! The quick brown fox.", "東京は日本の首都です。", "Emoji: 🚀🎉 ok", "mixed 中文 and 😀 and ascii"]


def test_round_trips_on_llama_cpp(live: LiveDaemon) -> None:
    with live.http() as http:
        for text in TEXTS:
            tokenized = http.post("/tokenize", json={"model": "smollm2", "content": text}).json()
            assert tokenized["count"] == len(tokenized["tokens"]) > 0 and tokenized["max_model_len"] == 4096
            back = http.post("/detokenize", json={"model": "smollm2", "tokens": tokenized["tokens"]}).json()
            assert back["content"] == back["prompt"] == text

        pieces = http.post("/tokenize", json={"model": "smollm2", "content": "Hi 🚀", "with_pieces": True}).json()["tokens"]
        raw = b"".join(bytes(p["piece"]) if isinstance(p["piece"], list) else p["piece"].encode() for p in pieces)
        assert raw == "Hi 🚀".encode() and all(isinstance(p["id"], int) for p in pieces)
        vllm_shape = http.post("/tokenize", json={"model": "smollm2", "prompt": "Hello", "add_special_tokens": True}).json()
        assert vllm_shape["tokens"] == http.post("/tokenize", json={"model": "smollm2", "content": "Hello"}).json()["tokens"]  # SmolLM2 adds no BOS


def test_round_trips_on_the_embedding_model(live: LiveDaemon) -> None:
    with live.http() as http:
        plain = http.post("/tokenize", json={"model": "minilm", "content": "Hello world"}).json()
        special = http.post("/tokenize", json={"model": "minilm", "content": "Hello world", "add_special": True}).json()
        assert len(special["tokens"]) == len(plain["tokens"]) + 2  # [CLS] ... [SEP]
        assert plain["max_model_len"] > 0
        back = http.post("/detokenize", json={"model": "minilm", "tokens": plain["tokens"]}).json()["content"]
        assert back == "hello world"  # an uncased WordPiece vocabulary


def test_bad_inputs(live: LiveDaemon) -> None:
    with live.http() as http:
        for body, param in (
            ({"model": "smollm2", "tokens": [49152]}, "tokens"),
            ({"model": "smollm2", "tokens": [-1]}, "tokens"),
            ({"model": "nope", "tokens": [1]}, "model"),
        ):
            reply = http.post("/detokenize", json=body)
            assert reply.status_code in (400, 404) and reply.json()["error"]["param"] == param, reply.text
        both = http.post("/tokenize", json={"model": "smollm2", "content": "a", "prompt": "b"})
        assert both.status_code == 400 and both.json()["error"]["param"] == "content"
        assert http.post("/tokenize", json={"model": "smollm2", "content": "still serving"}).status_code == 200
    assert httpx.post(live.url + "/tokenize", json={"model": "smollm2", "content": "a"}, timeout=30).status_code == 401
