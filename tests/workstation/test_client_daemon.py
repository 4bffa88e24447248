"""UnifiedInferenceClient against the real daemon with the shipped models, started by socket
activation: the client's first contact (its discovery RPC) starts the daemon, and it finds the
HTTP door through the daemon's welcome. API keys are on, so the key from SAGE_API_KEY is proven."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sage_client.client import AsyncUnifiedInferenceClient, BadRequestError, ModelNotFoundError, UnifiedInferenceClient
from tests.workstation.conftest import ActivatedDaemon, needs_socket_activate

pytestmark = [pytest.mark.slow, needs_socket_activate]

KEY = "sk-workstation-test"
GREEDY: dict[str, Any] = {"temperature": 0.0, "seed": 0}
FRANCE = [
    {"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ActivatedDaemon]:
    activated = ActivatedDaemon(tmp_path_factory.mktemp("wsd"), env={"SAGE_API_KEY": KEY, "TOKENIZERS_PARALLELISM": "false"})
    yield activated
    activated.stop()


@pytest.fixture
def client(daemon: ActivatedDaemon, monkeypatch: pytest.MonkeyPatch) -> Iterator[UnifiedInferenceClient]:
    monkeypatch.delenv("SAGE_BASE_URL", raising=False)
    monkeypatch.setenv("SAGE_SOCKET", str(daemon.socket))
    monkeypatch.setenv("SAGE_API_KEY", KEY)
    with UnifiedInferenceClient.create(model="smollm2", embedding_model="minilm") as c:
        yield c


def test_client_starts_and_finds_the_daemon_then_chats(client: UnifiedInferenceClient, daemon: ActivatedDaemon) -> None:
    assert daemon.daemon_started() and client.endpoint.local
    assert client.endpoint.base_url == daemon.url + "/v1"
    whole = client.chat(FRANCE, max_tokens=12, **GREEDY)
    assert whole.model == "smollm2" and whole.text.strip() and whole.finish_reason in ("stop", "length")
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 10
    deltas = list(client.chat_stream(FRANCE, max_tokens=12, **GREEDY))
    assert "".join(d.text for d in deltas) == whole.text, "greedy decoding: the stream and the whole reply agree"
    assert deltas[-1].usage == whole.usage


def test_generate_embed_and_models(client: UnifiedInferenceClient) -> None:
    result = client.generate("The capital of France is", model="gemma3-270m", max_tokens=4, **GREEDY)
    assert result.finish_reason == "length" and result.usage is not None and result.usage.completion_tokens == 4
    vectors = client.embed(["a cat sat on the mat", "a kitten sat on a rug", "quarterly tax filing"]).vectors
    assert [len(v) for v in vectors] == [384, 384, 384]
    similar = sum(a * b for a, b in zip(vectors[0], vectors[1]))
    unrelated = sum(a * b for a, b in zip(vectors[0], vectors[2]))
    assert similar > unrelated
    models = {m.id: m for m in client.models()}
    assert {"smollm2", "gemma3-270m", "minilm"} <= set(models) and models["minilm"].kind == "embedding"
    with pytest.raises(ModelNotFoundError, match="client.models"):
        client.chat("hi", model="no-such-model")
    with pytest.raises(BadRequestError):
        client.chat("hi", model="minilm")  # an embedding model cannot chat


async def test_async_twin_against_the_daemon(daemon: ActivatedDaemon) -> None:
    client = await AsyncUnifiedInferenceClient.acreate(socket_path=daemon.socket, api_key=KEY, model="smollm2", embedding_model="minilm")
    async with client:
        pieces = [d async for d in client.chat_stream(FRANCE, max_tokens=6, **GREEDY)]
        assert "".join(p.text for p in pieces).strip() and pieces[-1].finish_reason in ("stop", "length")
        assert len((await client.embed("hello")).vectors[0]) == 384
