"""The official OpenAI SDK (sync and async) against the door with the in-test control plane:
every error class raises the SDK's matching exception, auth on and off. (The same SDK against
the real models is in test_e2e_models.py.)"""

from __future__ import annotations

from typing import Any

import openai
import pytest
import trio

from tests.http.conftest import FakeDaemon

USER = [{"role": "user", "content": "hi"}]


def say(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def async_client(fake: FakeDaemon, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key=key, max_retries=0, timeout=30)


async def test_sync_client_chat_stream_embeddings_models(fake: FakeDaemon) -> None:
    def run() -> dict[str, Any]:
        with openai.OpenAI(base_url=fake.url + "/v1", api_key="unused", max_retries=0, timeout=30) as client:
            chat = client.chat.completions.create(model="chatty", messages=USER, max_tokens=3)
            chunks = list(client.chat.completions.create(model="chatty", messages=USER, stream=True, stream_options={"include_usage": True}))
            floats = client.embeddings.create(model="emb", input=["a", "b"], encoding_format="float")
            b64 = client.embeddings.create(model="emb", input=["a", "b"])  # the SDK asks for base64 and decodes it
            models = client.models.list()
            one = client.models.retrieve("emb")
            return {"chat": chat, "chunks": chunks, "floats": floats, "b64": b64, "models": models, "one": one}

    got = await trio.to_thread.run_sync(run)
    assert got["chat"].choices[0].message.content == "Hello world," and got["chat"].choices[0].finish_reason == "length"
    chunks = got["chunks"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world, again!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5 and chunks[-1].choices == []
    for f, b in zip(got["floats"].data, got["b64"].data, strict=True):
        assert b.embedding == pytest.approx(f.embedding, abs=1e-6)
    assert [m.id for m in got["models"].data] == ["chatty", "base", "emb"]
    assert got["one"].id == "emb" and got["one"].owned_by == "sage"


async def test_async_client_errors_raise_the_matching_sdk_exceptions(fake: FakeDaemon) -> None:
    client = async_client(fake)
    try:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="chatty", messages=USER, temperature=5)
        assert bad.value.param == "temperature" or (bad.value.body or {}).get("param") == "temperature"
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="chatty", messages=say("OVERFLOW"))
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="base", messages=USER)  # no chat template
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="chatty", messages=USER, tool_choice="required")  # no tools
        with pytest.raises(openai.BadRequestError):
            await client.embeddings.create(model="emb", input="x", dimensions=2)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=USER)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("nope")
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="chatty", messages=say("QUEUE_FULL"))
        assert limited.value.response.headers["retry-after"] == "3"
        with pytest.raises(openai.InternalServerError) as bug:  # only our own bug is a 500
            await client.chat.completions.create(model="chatty", messages=say("BUG"))
        assert bug.value.status_code == 500
        with pytest.raises(openai.APIError) as midway:  # an error after the stream started
            stream = await client.chat.completions.create(model="chatty", messages=say("FAIL_MIDSTREAM"), stream=True)
            async for _ in stream:
                pass
        assert "died" in str(midway.value)
    finally:
        await client.close()


async def test_auth_on(make_fake_daemon: Any) -> None:
    fake = await make_fake_daemon(("http.api_keys", ["sk-test"]))
    for key in ("wrong", ""):
        client = async_client(fake, key=key or "x")
        if not key:
            client = client.with_options(default_headers={"Authorization": ""})
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
        await client.close()
    client = async_client(fake, key="sk-test")
    assert (await client.chat.completions.create(model="chatty", messages=USER)).choices[0].message.content
    await client.close()


async def test_auth_off_takes_any_key(fake: FakeDaemon) -> None:
    client = async_client(fake, key="anything")
    assert len((await client.models.list()).data) == 3
    await client.close()
